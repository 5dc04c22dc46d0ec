"""The ``[security]`` configuration section: where the signing secret comes from and how commands are checked.

Every key is checked when the configuration loads. A value outside its range does not weaken security (the
verifier would still refuse what it must), it breaks the run quietly instead: a negative future skew or freshness
window makes every command stale or "from the future", so nothing is ever applied and the run finishes without
having grown. The ranges:

- ``freshness_window_ms``: at least 1000 (a shorter window refuses commands that are merely slow to arrive, such as
  a remote Tamiyo's) and at most 4294967295, the largest value ``CommandSecurity.freshness_window_ms`` (a uint32)
  can carry;
- ``max_future_skew_ms``: 0 or more, and less than ``freshness_window_ms``: a tolerated clock difference must be
  tolerated both ways, and a verifier whose clock runs that far *ahead* of the signer's would find every command
  already older than its window;
- ``nonce_capacity``: at least 1 (the replay ledger must hold the nonce it is checking);
- ``secret_env``: the name of an environment variable.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, at_most, not_negative
from esper_core.signing import SECRET_ENV_VAR

#: The largest ``CommandSecurity.freshness_window_ms`` (uint32) a signer can stamp on a command.
MAX_FRESHNESS_WINDOW_MS = 2**32 - 1
MIN_FRESHNESS_WINDOW_MS = 1_000
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _environment_variable(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{attribute.name} must be the name of an environment variable (letters, digits and _, not starting "
            f"with a digit), got {value!r}"
        )


@section("security")
@attrs.frozen
class SecurityOptions:
    #: The environment variable holding the shared HMAC secret.
    secret_env: str = attrs.field(default=SECRET_ENV_VAR, validator=_environment_variable)
    #: Refuse to start without a configured secret (always true for processes that share a bus).
    require_secret: bool = False
    #: Commands older than this are refused as stale. Tamiyo's signer stamps it on each command and Kasmina's
    #: verifier applies the smaller of its own value and the command's (a command may expire sooner, never later).
    freshness_window_ms: int = attrs.field(
        default=60_000, validator=[at_least(MIN_FRESHNESS_WINDOW_MS), at_most(MAX_FRESHNESS_WINDOW_MS)]
    )
    #: Commands issued further than this in the future are refused (less than ``freshness_window_ms``).
    max_future_skew_ms: int = attrs.field(default=5_000, validator=not_negative)
    #: Nonces remembered to refuse replays (bounded; see esper_core.signing.NonceLedger).
    nonce_capacity: int = attrs.field(default=4096, validator=at_least(1))

    def __attrs_post_init__(self) -> None:
        if self.max_future_skew_ms >= self.freshness_window_ms:
            raise ValueError(
                f"max_future_skew_ms ({self.max_future_skew_ms}) must be less than freshness_window_ms "
                f"({self.freshness_window_ms}): a verifier whose clock is that far ahead of the signer's finds every "
                "command already stale. Raise the window or lower the skew"
            )
