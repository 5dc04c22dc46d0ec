"""The Elasticsearch client the sink and the reader use: plain ``application/json`` on the wire, credentials from the
environment, Esper's timeout and retry settings.

Why a node class of our own: the official client (8.x and 9.x) rewrites every ``Accept`` and ``Content-Type`` header
to its versioned media type (``application/vnd.elasticsearch+json; compatible-with=9``). Real Elasticsearch 8 and 9
accept plain ``application/json`` (and ``application/x-ndjson`` for bulk) just as well, while compatible servers
(OpenSearch, and the ``osmem-server`` the tests run) answer the versioned types with 406. :class:`PlainJsonNode`
turns the versioned types back into the plain ones just before a request leaves, so one client works against all of
them, and nothing ever depends on the server's version string. The request body was already serialized by then
(the versioned and plain types serialize alike), so only the headers change.

This module imports the client library; only :mod:`esper_nissa.elastic.sink`, :mod:`esper_nissa.elastic.reader`
and the code that builds them import it (Esper imports ``esper_nissa.plugin`` at every start, which must stay cheap).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from elastic_transport import HttpHeaders, Urllib3HttpNode
from elastic_transport.client_utils import DEFAULT, DefaultType
from elasticsearch import ApiError, Elasticsearch, TransportError

from esper_core.errors import ConfigError
from esper_nissa.elastic.options import ElasticsearchOptions

_VERSIONED = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+)\s*;\s*compatible-with\s*=\s*\d+")
_MEDIA_HEADERS = ("accept", "content-type")

__all__ = ["PlainJsonNode", "build_client", "describe_error", "plain_media_type"]


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=9`` -> ``application/json`` (any other type as is)."""
    return _VERSIONED.sub(r"application/\1", value)


class PlainJsonNode(Urllib3HttpNode):
    """The client's default HTTP node, sending plain JSON media types (see the module)."""

    def perform_request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> Any:  # the node's response pair (not exported by elastic_transport under a public name)
        if headers is not None:
            headers = headers.copy()
            for name in _MEDIA_HEADERS:
                value = headers.get(name)
                if value:
                    headers[name] = plain_media_type(value)
        return super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout)


def _secret(variable: str, environ: Mapping[str, str]) -> str | None:
    if not variable:
        return None
    value = environ.get(variable, "")
    return value or None


def build_client(
    options: ElasticsearchOptions, *, url: str | None = None, environ: Mapping[str, str] | None = None
) -> Elasticsearch:
    """A client for ``url`` (default ``options.url``) with ``options``' timeout, retries and TLS settings, and the
    credentials found in the environment variables the options name (an API key wins over a user and password).

    :raises ConfigError: a user name without a password, or the other way round.
    """
    environ = os.environ if environ is None else environ
    target = (url or options.url).strip()
    api_key = _secret(options.api_key_env, environ)
    username = _secret(options.username_env, environ)
    password = _secret(options.password_env, environ)
    if api_key is None and (username is None) != (password is None):
        have, missing = (
            (options.username_env, options.password_env) if username else (options.password_env, options.username_env)
        )
        raise ConfigError(
            f"nissa.elasticsearch: the environment variable {have} is set but {missing} is not; basic "
            "authentication needs both (or set an API key in the variable named by nissa.elasticsearch.api_key_env)"
        )
    return Elasticsearch(
        target,
        node_class=PlainJsonNode,
        request_timeout=options.request_timeout_s,
        max_retries=options.max_retries,
        retry_on_timeout=True,
        api_key=api_key,
        basic_auth=(username, password) if api_key is None and username and password else None,
        ca_certs=options.ca_certs or DEFAULT,
    )


def describe_error(error: BaseException) -> str:
    """One line about a failed request: the HTTP status and Elasticsearch's error type and reason, or the transport
    failure (connection refused, timeout) without urllib3's repetitions."""
    if isinstance(error, ApiError):
        return f"HTTP {error.meta.status}: {_short(str(error.message))}{_reason(error.body)}"
    if isinstance(error, TransportError):
        return f"{type(error).__name__}: {_short(str(error.message))}"
    return f"{type(error).__name__}: {_short(str(error))}"


def _reason(body: object) -> str:
    if isinstance(body, dict):
        detail = body.get("error")
        if isinstance(detail, dict) and detail.get("reason"):
            return f" ({_short(str(detail['reason']))})"
    return ""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
