"""Registers esper-simic with Esper: the ``esper simic`` command and its configuration sections (``[simic]``,
``[simic.ground]``, ``[simic.train]``, ``[simic.evaluate]``, ``[simic.rewards]``).

Imported whenever Esper starts, so it imports nothing heavy: the option classes are plain attrs classes and the
command loads torch only when it runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from esper_core import hookimpl
from esper_core.plugins import CliCommandSpec
from esper_simic.cli import configure_simic, run_simic


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    from esper_simic.evaluation import EvaluateOptions
    from esper_simic.ground import GroundOptions
    from esper_simic.options import TrainOptions
    from esper_simic.rewards import RewardWeights
    from esper_simic.workbench import SimicOptions

    yield from (SimicOptions, GroundOptions, TrainOptions, EvaluateOptions, RewardWeights)


@hookimpl
def esper_core_cli_commands() -> Iterator[CliCommandSpec]:
    yield CliCommandSpec(
        name="simic",
        help="train the learned policy: collect | train | evaluate | publish | rollback",
        configure=configure_simic,
        run=run_simic,
    )
