"""``svsurgery rules``: the rule catalog, with what each family fixes and when it is safe."""

from __future__ import annotations

import argparse
import json

from svsurgery.cli.common import console


def register(verbs) -> None:
    parser = verbs.add_parser("rules", help="list the rule catalog (ids for fix --rules)", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    parser.add_argument("--rules-module", metavar="MODULE", action="append", default=[], help="also list the rules of this module")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from svsurgery import rules
    from svsurgery.family import load_rules_module

    families = [*rules.CATALOG, *(f for module in args.rules_module for f in load_rules_module(module))]
    if args.json:
        print(json.dumps([f.describe() for f in families], indent=2))
        return 0
    table = Table(title="svsurgery rule catalog (applied in this order)", show_lines=True)
    for column in ("id", "what it does", "fixes", "safe when", "kept when"):
        table.add_column(column)
    for family in families:
        kept = "parity strictly improves" if family.acceptance == "improves" else "parity no worse"
        references = "\n".join(family.references)
        table.add_row(
            escape(family.id), escape(family.title), escape(family.fixes),
            escape(family.safe_when + (f"\n{references}" if references else "")), kept,
        )  # fmt: skip
    console().print(table)
    return 0
