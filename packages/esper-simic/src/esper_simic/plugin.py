"""Registers esper-simic with Esper: the ``esper simic`` command its configuration sections (``[simic]``,
``[simic.ground]``, ``[simic.evaluate]``, ``[simic.rewards]``) and the built-in ``ppo`` trainer (``[simic.train]``).

Imported whenever Esper starts, so it imports nothing heavy: the option classes are plain attrs classes and the
command loads torch only when it runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from esper_core import hookimpl
from esper_core.plugins import BuildContext, CliCommandSpec, ServiceSpec, SimicTrainerSpec
from esper_simic.cli import configure_simic, run_simic


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    from esper_simic.evaluation import EvaluateOptions
    from esper_simic.ground import GroundOptions
    from esper_simic.rewards import RewardWeights
    from esper_simic.workbench import SimicOptions

    yield from (SimicOptions, GroundOptions, EvaluateOptions, RewardWeights)


@hookimpl
def esper_core_cli_commands() -> Iterator[CliCommandSpec]:
    yield CliCommandSpec(
        name="simic",
        help="train the learned policy: collect | train | evaluate | publish | rollback",
        configure=configure_simic,
        run=run_simic,
    )


def build_ppo_trainer(context: BuildContext) -> object:
    from esper_simic.trainer import PPOTrainer

    return PPOTrainer(context.options)


@hookimpl
def esper_simic_trainers() -> Iterator[SimicTrainerSpec]:
    from esper_simic.options import TrainOptions

    yield SimicTrainerSpec(
        name="ppo",
        factory=build_ppo_trainer,
        options=TrainOptions,
        description="Behaviour cloning of the heuristic's decisions, then PPO with V-trace-corrected advantages.",
    )


def build_collection_worker(context: BuildContext) -> object:
    from esper_simic.distributed import CollectionWorker, WorkerOptions
    from esper_simic.rewards import RewardWeights

    options = context.options if isinstance(context.options, WorkerOptions) else WorkerOptions()
    weights = context.config.get(RewardWeights) if context.config is not None else RewardWeights()
    return CollectionWorker(context.bus, options, weights)


def build_simic_service(context: BuildContext) -> object:
    from esper_simic.service import SimicService, SimicServiceOptions
    from esper_simic.workbench import workbench_of

    options = context.options if isinstance(context.options, SimicServiceOptions) else SimicServiceOptions()
    if context.config is None:
        raise ValueError("the simic service needs the configuration it was started with")
    return SimicService(workbench_of(context.registry, context.config), options)


@hookimpl
def esper_weatherlight_services() -> Iterator[ServiceSpec]:
    from esper_simic.distributed import WorkerOptions
    from esper_simic.service import SimicServiceOptions

    yield ServiceSpec(
        name="simic",
        factory=build_simic_service,
        options=SimicServiceOptions,
        requires=("torch",),
        description="Simic's loop, round after round: gather experience, train a candidate, evaluate it on held-out "
        "runs, publish it if it is not worse (docs/simic.md).",
    )

    yield ServiceSpec(
        name="simic-worker",
        factory=build_collection_worker,
        options=WorkerOptions,
        requires=("torch",),
        description="Trains the ground runs `esper simic collect --distributed` asks for and sends their episodes "
        "back (several machines share the work through Oona).",
    )
