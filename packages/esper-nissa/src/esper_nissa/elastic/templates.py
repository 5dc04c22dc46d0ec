"""Index templates: the explicit mappings of the sink's daily indices, installed before the first document is sent.

Why explicit: left to dynamic mapping, the first document decides each field's type (an epoch could become ``long``
in one index and ``float`` in another, a label ``text`` instead of ``keyword``), and a stray field of a plugin's
could add mappings without end. So each kind's template fixes every known field (ids, names and labels
``keyword``; times ``date``; counts ``long``; measurements ``double``) and is ``strict``: a document with an
unknown field is refused, never silently mapped. The only open places are the string maps of the packet (event
attributes, metric attributes, health indicators): their keys are not known in advance, so they are objects whose
new keys map to ``keyword`` through a dynamic template — the "flattened" idea, with the mapping types that both
Elasticsearch 8/9 and compatible servers accept (``flattened`` is Elasticsearch-only).

Metrics are ``nested``, so that a query can ask for a metric's value by its name (``metrics.name`` and
``metrics.value`` of the same metric), which a plain object array cannot answer.

The templates are put again whenever the sink (re)connects: the call overwrites them with the same content, and a
server that lost them (a fresh cluster, a test server restarted empty) gets them back before the next document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esper_nissa.elastic.documents import FIELD_REPORTS, KINDS, TELEMETRY, index_pattern

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: Above the built-in templates of Elasticsearch (``logs-*-*`` and friends are at 100), so ours win on overlap.
PRIORITY = 200
#: Bumped whenever the mappings change; stored in the template's ``_meta``.
MAPPING_VERSION = 1

_KEYWORD: dict[str, Any] = {"type": "keyword"}
_LABEL: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
_LONG: dict[str, Any] = {"type": "long"}
_DOUBLE: dict[str, Any] = {"type": "double"}
_LABELS: dict[str, Any] = {"type": "object", "dynamic": True}

_COMMON: dict[str, Any] = {
    "@timestamp": {"type": "date"},
    "kind": _KEYWORD,
    "run_id": _KEYWORD,
    "source": _KEYWORD,
    "epoch": _LONG,
    "global_step": _LONG,
    "packet_id": _KEYWORD,
    "seq": _LONG,
}

_TELEMETRY: dict[str, Any] = {
    "level": _KEYWORD,
    "priority": _KEYWORD,
    "health": {
        "type": "object",
        "dynamic": "strict",
        "properties": {"status": _KEYWORD, "summary": _LABEL, "indicators": _LABELS},
    },
    "event_count": _LONG,
    "metrics": {
        "type": "nested",
        "dynamic": "strict",
        "properties": {
            "name": _KEYWORD,
            "value": _DOUBLE,
            "unit": _KEYWORD,
            "special": _KEYWORD,
            "attributes": _LABELS,
        },
    },
}

_EVENT: dict[str, Any] = {
    "event_id": _KEYWORD,
    "event": _KEYWORD,
    "level": _KEYWORD,
    "description": {"type": "text"},
    "attributes": _LABELS,
}

#: Every string under these objects becomes a keyword field.
_DYNAMIC_TEMPLATES = [
    {name: {"path_match": path, "match_mapping_type": "string", "mapping": _LABEL}}
    for name, path in (
        ("event_attributes", "attributes.*"),
        ("metric_attributes", "metrics.attributes.*"),
        ("health_indicators", "health.indicators.*"),
    )
]


def template_name(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}"


def mappings(kind: str) -> dict[str, Any]:
    """The mappings of ``kind``'s indices."""
    if kind == TELEMETRY:
        properties = {**_COMMON, **_TELEMETRY}
    else:
        properties = {**_COMMON, **_EVENT}
        if kind == FIELD_REPORTS:
            properties["contribution"] = _DOUBLE
    return {"dynamic": "strict", "dynamic_templates": _DYNAMIC_TEMPLATES, "properties": properties}


def template(prefix: str, kind: str) -> dict[str, Any]:
    """The body of ``kind``'s composable index template (the arguments of ``put_index_template``)."""
    return {
        "index_patterns": [index_pattern(prefix, kind)],
        "priority": PRIORITY,
        "template": {"settings": {"number_of_shards": 1}, "mappings": mappings(kind)},
        "meta": {"managed_by": "esper-nissa", "mapping_version": MAPPING_VERSION},
    }


def install_templates(client: Elasticsearch, prefix: str) -> None:
    """Put the template of every kind (overwriting ours of the same name)."""
    for kind in KINDS:
        client.indices.put_index_template(name=template_name(prefix, kind), **template(prefix, kind))
