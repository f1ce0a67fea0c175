"""``svsurgery rules``: the rule catalog, with what each family fixes and when it is safe."""

from __future__ import annotations

import argparse

from svsurgery.cli.arguments import ReportArgs, files
from svsurgery.cli.common import console


def register(verbs) -> None:
    parser = verbs.add_parser(
        "rules", help="list the rule catalog (ids for fix --rules)", description=__doc__.split(": ", 1)[1]
    )
    parser.add_argument(
        "--rules-module", metavar="MODULE", action="append", default=[], help="also list the rules of this module"
    )
    ReportArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery import rules
    from svsurgery.rules.base import load_rules_module

    files(args).read_all((m for m in args.rules_module if m.endswith(".py")), "--rules-module file")
    ReportArgs.declare(args)
    families = [*rules.CATALOG, *(f for module in args.rules_module for f in load_rules_module(module))]
    ReportArgs.emit(args, rules.CatalogReport(families), console())
    return 0
