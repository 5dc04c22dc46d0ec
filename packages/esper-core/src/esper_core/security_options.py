"""The ``[security]`` configuration section: where the signing secret comes from and how commands are checked."""

from __future__ import annotations

import attrs

from esper_core.config import section
from esper_core.signing import SECRET_ENV_VAR


@section("security")
@attrs.frozen
class SecurityOptions:
    #: The environment variable holding the shared HMAC secret.
    secret_env: str = SECRET_ENV_VAR
    #: Refuse to start without a configured secret (always true for processes that share a bus).
    require_secret: bool = False
    #: Commands older than this are refused as stale. Tamiyo's signer stamps it on each command and Kasmina's
    #: verifier applies the smaller of its own value and the command's (a command may expire sooner, never later).
    freshness_window_ms: int = 60_000
    #: Commands issued further than this in the future are refused.
    max_future_skew_ms: int = 5_000
    #: Nonces remembered to refuse replays (bounded; see esper_core.signing.NonceLedger).
    nonce_capacity: int = 4096
