"""``esper report RUN_DIR``: write a run's report (plots and summary) and print where it is."""

from __future__ import annotations

import argparse
from typing import Any


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the report of a run: accuracy.png, loss.png and parameters.png (with every germination, "
        "fossilization, cull and rollback marked) and summary.md (final numbers, seeds, decisions), into "
        "RUN_DIR/report. Works for finished runs and for runs that were killed. Given a Simic candidate's directory "
        "(`esper simic train` wrote curves.json there), it writes learning.png: return, entropy, value loss, KL."
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the one `esper run` wrote)")
    parser.add_argument(
        "-o", "--output", metavar="DIR", default=None, help="write the report here instead of RUN_DIR/report"
    )


def run_report(args: Any) -> int:
    from pathlib import Path

    from esper_nissa.report import write_report
    from esper_nissa.report.learning import is_training_dir, write_learning_report

    if is_training_dir(Path(args.run_dir)) and not (Path(args.run_dir) / "record.log").exists():
        print(write_learning_report(args.run_dir, output=args.output))  # a Simic candidate: its learning curves
        return 0
    print(write_report(args.run_dir, output=args.output))
    return 0
