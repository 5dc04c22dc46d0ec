"""The ``[nissa.elasticsearch]`` configuration section of the ``elasticsearch`` telemetry sink.

Secrets never live in a configuration file (it is copied into every run directory as ``config.toml``): the section
names *environment variables* that hold an API key or a user name and password, and the client reads them when the
sink is built. A URL with a user or password in it is refused for the same reason.

Every key is checked when the configuration loads; see docs/nissa.md for the meaning of each.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative, positive

#: Characters Elasticsearch refuses in an index name (besides upper case, and a leading ``-``, ``_`` or ``+``).
_INDEX_FORBIDDEN = set(' \\/*?"<>|,#:')
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _http_url(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{attribute.name} must be an http:// or https:// URL of an Elasticsearch server, e.g. "
            f'"http://127.0.0.1:9200", got {value!r}'
        )
    if parts.username or parts.password:
        raise ValueError(
            f"{attribute.name} must not carry a user name or password (the configuration is copied into every run "
            "directory): put them in the environment variables named by username_env and password_env, or an API "
            "key in the one named by api_key_env"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{attribute.name} has an invalid port: {value!r}") from None


def _index_prefix(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = ""
    if not value:
        problem = "it is empty"
    elif value != value.lower():
        problem = "Elasticsearch index names are lower case"
    elif value[0] in "-_+.":
        problem = "an index name cannot start with -, _, + or ."
    elif forbidden := sorted(set(value) & _INDEX_FORBIDDEN):
        problem = "it contains " + " ".join(repr(character) for character in forbidden)
    elif len(value.encode("utf-8")) > 200:
        problem = "it is longer than 200 bytes (index names are at most 255, and the kind and date follow)"
    if problem:
        raise ValueError(
            f'{attribute.name} must be a valid start of an Elasticsearch index name, e.g. "esper" (indices are '
            f"named <index_prefix>-<kind>-YYYY.MM.DD), got {value!r}: {problem}"
        )


def _environment_variable(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value and not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{attribute.name} must be the name of an environment variable (letters, digits and _, not starting with "
            f'a digit) or "" for none, got {value!r}; the secret itself never goes in the configuration'
        )


@section("nissa.elasticsearch")
@attrs.frozen
class ElasticsearchOptions:
    #: The server (Elasticsearch 8/9, or a compatible server). ``https://`` for TLS.
    url: str = attrs.field(default="http://127.0.0.1:9200", validator=_http_url)
    #: Indices are ``<index_prefix>-<kind>-YYYY.MM.DD``; retention only ever deletes indices of this shape.
    index_prefix: str = attrs.field(default="esper", validator=_index_prefix)
    #: Delete the sink's own daily indices older than this many days (checked when the sink first reaches the
    #: server, then at most once a day); 0 keeps them forever.
    retention_days: int = attrs.field(default=30, validator=not_negative)
    #: Documents per bulk request. ``emit`` sends on its own only when this many are waiting.
    batch_size: int = attrs.field(default=500, validator=at_least(1))
    #: Documents kept while the server cannot be reached; beyond this the oldest are dropped (and counted).
    max_buffered: int = attrs.field(default=50_000, validator=at_least(1))
    #: Seconds one request may take before it counts as failed.
    request_timeout_s: float = attrs.field(default=10.0, validator=positive)
    #: Times the client retries a request that failed to connect or timed out, before the flush fails.
    max_retries: int = attrs.field(default=2, validator=not_negative)
    #: Failed deliveries in a row that open the sink's circuit breaker: no request at all for ``retry_after_s``.
    failure_threshold: int = attrs.field(default=3, validator=at_least(1))
    retry_after_s: float = attrs.field(default=30.0, validator=not_negative)
    #: Environment variable holding an API key (the base64 "id:key" form Elasticsearch hands out); "" for none.
    api_key_env: str = attrs.field(default="ESPER_ELASTICSEARCH_API_KEY", validator=_environment_variable)
    #: Environment variables holding a user name and password for basic authentication; "" for none.
    username_env: str = attrs.field(default="ESPER_ELASTICSEARCH_USERNAME", validator=_environment_variable)
    password_env: str = attrs.field(default="ESPER_ELASTICSEARCH_PASSWORD", validator=_environment_variable)
    #: A CA bundle (PEM) to verify an https server with; "" uses the system's certificates.
    ca_certs: str = ""

    def __attrs_post_init__(self) -> None:
        if self.max_buffered < self.batch_size:
            raise ValueError(
                f"max_buffered ({self.max_buffered}) must be at least batch_size ({self.batch_size}): the sink must "
                "be able to hold one whole batch while the server is away"
            )
