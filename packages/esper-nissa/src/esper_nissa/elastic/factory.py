"""Building the ``elasticsearch`` sink from a run's configuration. The client library is imported here only when a
sink is built, never when Esper merely starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_nissa.elastic.options import ElasticsearchOptions

if TYPE_CHECKING:
    from esper_core.plugins import BuildContext
    from esper_nissa.elastic.sink import ElasticsearchSink


def build_elasticsearch_sink(context: BuildContext) -> ElasticsearchSink:
    """The ``elasticsearch`` sink for one run, configured by ``[nissa.elasticsearch]``.

    Building it makes no request: the server is first contacted at the first flush (or full batch), so a server
    that is down when the run starts costs buffered telemetry, never the run.
    """
    from esper_nissa.elastic.sink import ElasticsearchSink

    options: ElasticsearchOptions = context.options if context.options is not None else ElasticsearchOptions()
    return ElasticsearchSink(options)
