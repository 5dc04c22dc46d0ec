"""The ``elasticsearch`` telemetry sink and reading a run back from Elasticsearch (docs/nissa.md).

Importing this package is cheap: it holds the configuration section and the factory; the Elasticsearch client is
imported only by the modules that talk to a server (:mod:`.client`, :mod:`.sink`, :mod:`.reader`), when a sink is
built or a run is read back.

- :mod:`.options`: ``[nissa.elasticsearch]``;
- :mod:`.documents`: packets as documents, their ids and daily indices;
- :mod:`.templates`: the index templates (explicit mappings);
- :mod:`.retention`: deleting the sink's indices past ``retention_days``;
- :mod:`.client`: the client (plain JSON media types, credentials from the environment);
- :mod:`.sink`: :class:`~.sink.ElasticsearchSink`, buffered bulk writes, at least once;
- :mod:`.reader`: a run's documents in order, and their summary (``esper report --elasticsearch``).
"""

from esper_nissa.elastic.factory import build_elasticsearch_sink
from esper_nissa.elastic.options import ElasticsearchOptions

#: The sink's name in ``nissa.sinks``.
SINK_NAME = "elasticsearch"

__all__ = ["SINK_NAME", "ElasticsearchOptions", "build_elasticsearch_sink"]
