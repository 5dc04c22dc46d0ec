"""``esper report RUN_DIR``: write a run's report (plots and summary) and print where it is.

``esper report --elasticsearch URL --run RUN_ID``: read a run's telemetry documents back from Elasticsearch (written
there by the ``elasticsearch`` sink), write them as JSON lines and print a short summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from esper_core.errors import EsperError


class ReportArgumentsError(EsperError):
    """``esper report`` was given a combination of arguments it cannot act on; the message says what to give."""


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the report of a run: accuracy.png, loss.png and parameters.png (with every germination, "
        "fossilization, cull and rollback marked) and summary.md (final numbers, seeds, decisions), into "
        "RUN_DIR/report. Works for finished runs and for runs that were killed. Given a Simic candidate's directory "
        "(`esper simic train` wrote curves.json there), it writes learning.png: return, entropy, value loss, KL. "
        "With --elasticsearch URL --run RUN_ID instead of RUN_DIR, it reads the run's telemetry documents back from "
        "Elasticsearch (the elasticsearch sink wrote them), writes them as JSON lines and prints a summary."
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", nargs="?", default=None, help="a run directory (the one `esper run` wrote)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        default=None,
        help="write the report here instead of RUN_DIR/report (with --elasticsearch: the directory of "
        "documents.jsonl and summary.txt, by default ./elasticsearch-RUN_ID)",
    )
    elastic = parser.add_argument_group("reading a run back from Elasticsearch")
    elastic.add_argument(
        "--elasticsearch",
        metavar="URL",
        default=None,
        help="the server the elasticsearch sink wrote to, e.g. http://127.0.0.1:9200 (credentials come from the "
        "environment variables ESPER_ELASTICSEARCH_API_KEY, or ESPER_ELASTICSEARCH_USERNAME and "
        "ESPER_ELASTICSEARCH_PASSWORD)",
    )
    elastic.add_argument("--run", metavar="RUN_ID", dest="run_id", default=None, help="the run to read back")
    elastic.add_argument(
        "--index-prefix",
        metavar="PREFIX",
        default=None,
        help='the sink\'s nissa.elasticsearch.index_prefix (default "esper")',
    )


def run_report(args: Any) -> int:
    from pathlib import Path

    elasticsearch = getattr(args, "elasticsearch", None)
    run_id = getattr(args, "run_id", None)
    prefix = getattr(args, "index_prefix", None)
    if elasticsearch is not None or run_id is not None or prefix is not None:
        return _report_from_elasticsearch(args.run_dir, elasticsearch, run_id, prefix, args.output)
    if args.run_dir is None:
        raise ReportArgumentsError(
            "give a run directory (esper report RUN_DIR), or read a run back from Elasticsearch with "
            "esper report --elasticsearch URL --run RUN_ID"
        )

    from esper_nissa.report import write_report
    from esper_nissa.report.learning import is_training_dir, write_learning_report

    if is_training_dir(Path(args.run_dir)) and not (Path(args.run_dir) / "record.log").exists():
        print(write_learning_report(args.run_dir, output=args.output))  # a Simic candidate: its learning curves
        return 0
    print(write_report(args.run_dir, output=args.output))
    return 0


def _report_from_elasticsearch(
    run_dir: str | None, url: str | None, run_id: str | None, prefix: str | None, output: str | None
) -> int:
    import re
    from pathlib import Path

    from esper_nissa.elastic.options import ElasticsearchOptions

    if run_dir is not None:
        raise ReportArgumentsError(
            f"give either a run directory ({run_dir}) or --elasticsearch URL --run RUN_ID, not both"
        )
    if url is None or not run_id:
        raise ReportArgumentsError(
            "reading a run back from Elasticsearch needs both --elasticsearch URL and --run RUN_ID"
        )
    try:
        options = ElasticsearchOptions(url=url, index_prefix=prefix if prefix is not None else "esper")
    except ValueError as error:
        raise ReportArgumentsError(f"esper report --elasticsearch: {error}") from None

    from esper_nissa.elastic.client import build_client
    from esper_nissa.elastic.reader import format_summary, read_run, summarize, write_jsonl

    client = build_client(options)
    try:
        documents = read_run(client, options.index_prefix, run_id, url=options.url)
    finally:
        client.close()
    directory = Path(output) if output is not None else Path(f"elasticsearch-{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}")
    written = write_jsonl(documents, directory / "documents.jsonl")
    summary = format_summary(summarize(run_id, documents))
    (directory / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(summary)
    print(written)
    return 0
