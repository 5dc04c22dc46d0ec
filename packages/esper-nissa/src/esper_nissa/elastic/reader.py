"""Reading a run back from Elasticsearch: every document of one run id, of every kind, in the order it happened,
and a short summary of them (``esper report --elasticsearch URL --run RUN_ID``).

The order is epoch, global step, timestamp (to the nanosecond), then the packet id and the document's place in its
packet (``seq``); the last two make it total. The documents are fetched in pages ordered by packet id and ``seq``
alone (``search_after`` on two exact keys: a keyword and a small integer), and put in run order here. Why not let
the server sort by time: ``@timestamp`` is mapped as ``date``, which keeps milliseconds, so packets of the same
millisecond would tie; ``date_nanos`` would keep them apart but refuses years after 2262 and its 19-digit sort
values are compared as doubles in ``search_after`` by some compatible servers (osmem does), so pages would skip or
repeat documents; sorting on ``_id`` is refused by Elasticsearch 8 by default. The documents' own timestamp strings
keep every nanosecond, and a run's documents all fit in memory (they are all returned anyway), so sorting them here
is both exact and cheap. ``search_after`` without a point in time works the same on Elasticsearch and compatible
servers; a run is read after it was written, so there is no concurrent writer to be consistent with.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from esper_nissa.elastic.client import describe_error
from esper_nissa.elastic.documents import DECISIONS, KINDS, LIFECYCLE, index_pattern
from esper_nissa.elastic.errors import ElasticsearchReadError

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: The order of the pages: exact keys that make it total. ``unmapped_type`` lets an index of ours that lacks a field
#: (none should) sort instead of failing the search.
PAGE_SORT: list[dict[str, Any]] = [
    {"packet_id": {"order": "asc", "unmapped_type": "keyword"}},
    {"seq": {"order": "asc", "unmapped_type": "long"}},
]


def run_order(document: dict[str, Any]) -> tuple[int, int, str, str, int]:
    """Where a document comes in its run. ``@timestamp`` is RFC 3339 with nine fraction digits as the sink writes
    it, so comparing the strings compares the times."""
    return (
        int(document.get("epoch", 0)),
        int(document.get("global_step", 0)),
        str(document.get("@timestamp", "")),
        str(document.get("packet_id", "")),
        int(document.get("seq", 0)),
    )


__all__ = ["RunSummary", "format_summary", "iter_run", "read_run", "run_order", "summarize", "write_jsonl"]


def _patterns(prefix: str) -> str:
    return ",".join(index_pattern(prefix, kind) for kind in KINDS)


def iter_run(client: Elasticsearch, prefix: str, run_id: str, *, page_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every document of ``run_id`` in the sink's indices under ``prefix``, page by page in packet-id order (not
    run order: see the module), each as its source with ``_index`` and ``_id`` put first. Refreshes those indices
    first, so what a run just wrote is all visible (a refresh the server refuses is skipped)."""
    from elasticsearch import ApiError

    indices = _patterns(prefix)
    # A reader without the `maintenance` privilege may not refresh: it may then miss the last second's writes.
    with contextlib.suppress(ApiError):
        client.indices.refresh(index=indices, ignore_unavailable=True, allow_no_indices=True)
    after: list[Any] | None = None
    while True:
        response = client.search(
            index=indices,
            query={"term": {"run_id": run_id}},
            sort=PAGE_SORT,
            size=page_size,
            search_after=after,
            ignore_unavailable=True,
            allow_no_indices=True,
            track_total_hits=False,
        )
        hits: list[dict[str, Any]] = response.body["hits"]["hits"]
        for hit in hits:
            yield {"_index": hit["_index"], "_id": hit["_id"], **hit["_source"]}
        if len(hits) < page_size:
            return
        after = hits[-1]["sort"]


def read_run(
    client: Elasticsearch, prefix: str, run_id: str, *, url: str = "", page_size: int = 1000
) -> list[dict[str, Any]]:
    """Every document of the run, in run order (:func:`run_order`); raises :class:`ElasticsearchReadError` when
    the server cannot be read or holds no document of the run."""
    where = url or "the Elasticsearch server"
    try:
        documents = list(iter_run(client, prefix, run_id, page_size=page_size))
    except Exception as error:  # a transport or API failure becomes one clean line
        raise ElasticsearchReadError(f"cannot read run {run_id!r} from {where}: {describe_error(error)}") from error
    documents.sort(key=run_order)
    if not documents:
        raise ElasticsearchReadError(
            f"{where} holds no document of run {run_id!r} in the indices {_patterns(prefix)}. Check the run id (the "
            "name of the run's directory, run.name) and the index prefix "
            "(--index-prefix, nissa.elasticsearch.index_prefix)"
        )
    return documents


@attrs.frozen
class RunSummary:
    run_id: str
    documents: int
    by_kind: dict[str, int]
    decisions: dict[str, int]
    transitions: dict[str, int]
    sources: dict[str, int]
    first_epoch: int
    last_epoch: int


def summarize(run_id: str, documents: list[dict[str, Any]]) -> RunSummary:
    """Documents per kind, decisions by operation, lifecycle transitions by target stage, packets per source."""
    kinds: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    epochs = [int(document.get("epoch", 0)) for document in documents] or [0]
    for document in documents:
        kind = str(document.get("kind", "?"))
        kinds[kind] += 1
        attributes = document.get("attributes") or {}
        if kind == DECISIONS:
            decisions[str(attributes.get("operation", "?"))] += 1
        elif kind == LIFECYCLE:
            transitions[str(attributes.get("stage", "?"))] += 1
        elif kind == "telemetry":
            sources[str(document.get("source", "?"))] += 1
    order = {kind: place for place, kind in enumerate(KINDS)}
    return RunSummary(
        run_id=run_id,
        documents=len(documents),
        by_kind=dict(sorted(kinds.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))),
        decisions=dict(decisions.most_common()),
        transitions=dict(transitions.most_common()),
        sources=dict(sources.most_common()),
        first_epoch=min(epochs),
        last_epoch=max(epochs),
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


def format_summary(summary: RunSummary) -> str:
    """A few lines for the terminal."""
    return "\n".join(
        [
            f"run {summary.run_id}: {summary.documents} documents, epochs {summary.first_epoch}-{summary.last_epoch}",
            f"  by kind: {_counts(summary.by_kind)}",
            f"  decisions by operation: {_counts(summary.decisions)}",
            f"  transitions by target stage: {_counts(summary.transitions)}",
            f"  telemetry packets by source: {_counts(summary.sources)}",
        ]
    )


def write_jsonl(documents: list[dict[str, Any]], path: Path) -> Path:
    """The documents as JSON lines into ``path`` (written beside it first, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as file:
        for document in documents:
            file.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
    partial.replace(path)
    return path
