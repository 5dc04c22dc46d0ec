"""Retention: deleting the sink's own daily indices once they are older than ``retention_days``.

Only names of the exact shape ``<prefix>-<kind>-YYYY.MM.DD``, with one of the sink's kinds and a real date, are ever
considered: another application's index, an index someone made by hand under the same prefix, or one with a date
suffix that is not a date, is never touched. An index is old when its whole day lies before the cut-off: with 30
days of retention, on 2026-12-31 the index of 2026-12-01 is kept and the one of 2026-11-30 deleted.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

from esper_nissa.elastic.documents import KINDS, index_pattern

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: Indices named in one delete request (an URL holds them all).
_DELETE_CHUNK = 50


def index_matcher(prefix: str) -> re.Pattern[str]:
    kinds = "|".join(re.escape(kind) for kind in KINDS)
    return re.compile(rf"{re.escape(prefix)}-(?:{kinds})-(\d{{4}})\.(\d{{2}})\.(\d{{2}})")


def index_day(name: str, prefix: str) -> dt.date | None:
    """The day of one of the sink's daily indices, or None when ``name`` is not one."""
    match = index_matcher(prefix).fullmatch(name)
    if match is None:
        return None
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def expired(names: list[str], prefix: str, retention_days: int, today: dt.date) -> list[str]:
    """The names among ``names`` that are the sink's indices of a day before ``today - retention_days``, sorted.
    ``retention_days`` 0 keeps everything."""
    if retention_days <= 0:
        return []
    cutoff = today - dt.timedelta(days=retention_days)
    return sorted(name for name in names if (day := index_day(name, prefix)) is not None and day < cutoff)


def sink_indices(client: Elasticsearch, prefix: str) -> list[str]:
    """Every existing index (open or closed) that matches one of the sink's kind patterns."""
    patterns = ",".join(index_pattern(prefix, kind) for kind in KINDS)
    found = client.indices.get(index=patterns, expand_wildcards="open,closed", allow_no_indices=True)
    return sorted(found.body)


def apply_retention(client: Elasticsearch, prefix: str, retention_days: int, today: dt.date) -> list[str]:
    """Delete the sink's indices older than ``retention_days`` (see the module); return their names."""
    if retention_days <= 0:
        return []
    old = expired(sink_indices(client, prefix), prefix, retention_days, today)
    for start in range(0, len(old), _DELETE_CHUNK):
        client.indices.delete(index=",".join(old[start : start + _DELETE_CHUNK]), ignore_unavailable=True)
    return old
