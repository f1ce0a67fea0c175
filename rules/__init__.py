"""The rule catalog: one rule family per module (installed as ``svsurgery.rules``)."""
