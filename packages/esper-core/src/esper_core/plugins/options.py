"""The ``[plugins]`` configuration section."""

from __future__ import annotations

import attrs

from esper_core.config import section


@section("plugins")
@attrs.frozen
class PluginsOptions:
    #: Entry-point or distribution names not to load (also ``ESPER_BLOCKED_PLUGINS=a,b``).
    blocked: list[str] = attrs.Factory(list)
    #: Distributions that must be installed for this configuration to run.
    required: list[str] = attrs.Factory(list)
