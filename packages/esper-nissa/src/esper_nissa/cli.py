"""``esper report RUN_DIR``: write a run's report (plots and summary) and print where it is."""

from __future__ import annotations

import argparse
from typing import Any


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the report of a run: accuracy.png, loss.png and parameters.png (with every germination, "
        "fossilization, cull and rollback marked) and summary.md (final numbers, seeds, decisions), into "
        "RUN_DIR/report. Works for finished runs and for runs that were killed."
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the one `esper run` wrote)")
    parser.add_argument(
        "-o", "--output", metavar="DIR", default=None, help="write the report here instead of RUN_DIR/report"
    )


def run_report(args: Any) -> int:
    from esper_nissa.report import write_report

    print(write_report(args.run_dir, output=args.output))
    return 0
