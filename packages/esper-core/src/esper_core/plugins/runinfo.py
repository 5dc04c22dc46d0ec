"""The identity of a training run, as lifecycle hooks receive it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from esper_core.config import EsperConfig


@attrs.frozen(kw_only=True)
class RunInfo:
    run_id: str
    run_dir: Path
    config: EsperConfig
    resumed: bool = False
