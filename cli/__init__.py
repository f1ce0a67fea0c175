"""svsurgery's command line: one module per verb, :mod:`svsurgery.cli.arguments` the shared groups.

Every verb module is imported to build the parser, so what only running a verb needs (the
engine and its rules, the diff and float16 evaluators, the audit, the torch-based example
builders) is imported inside its ``run()``: ``svsurgery --help`` and the other verbs do not pay
for it, and torch is never imported by a verb that does not use it.
"""
