"""The errors of the ``elasticsearch`` sink and of reading a run back. Each names the server and what went wrong;
the command line prints them as one ``esper: error:`` line."""

from __future__ import annotations

from esper_core.errors import EsperError


class ElasticsearchSinkError(EsperError):
    """A flush could not deliver every buffered document (nothing is lost: they stay buffered for the next flush),
    or the sink closed with documents it never delivered."""


class ElasticsearchReadError(EsperError):
    """Reading a run's documents back failed: the server could not be reached, refused the request, or holds no
    document of that run."""
