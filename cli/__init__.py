"""The ``svsurgery`` command line: one module per verb, sharing argument helpers."""
