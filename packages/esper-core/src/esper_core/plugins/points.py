"""The plugin points: one table of what a plugin can provide, and how a run chooses it.

Each row names the provider hook a plugin implements, the descriptor type the hook yields, the human name of the
kind ("policy", "telemetry sink") and the configuration key that selects implementations by name. Everything else
is derived from it: the provider hookspecs (:mod:`esper_core.plugins.hookspecs`), the registry's lookups and
conflict messages (:class:`esper_core.plugins.registry.Registry`), ``esper plugins`` and the hook reference in
docs/plugins.md (a test keeps the document in step). To add a plugin point, add a row (and its descriptor type).

Hook names say the point they plug into: ``esper_<area>_<kind>s`` where ``<area>`` owns the configuration key
that chooses them (``tolaria.controller`` chooses among ``esper_tolaria_controllers``).
"""

from __future__ import annotations

from typing import Any

import attrs

from esper_core.plugins.descriptors import (
    ArtifactStoreSpec,
    BlueprintCatalogSpec,
    BusBackendSpec,
    CliCommandSpec,
    ControllerSpec,
    PolicySpec,
    SeedExecutorSpec,
    ServiceSpec,
    SimicTrainerSpec,
    TaskSpec,
    TelemetrySinkSpec,
)


@attrs.frozen(kw_only=True)
class PluginPoint:
    """One place a plugin can plug in."""

    #: The provider hook plugins implement, e.g. ``"esper_tamiyo_policies"``.
    hook: str
    #: The descriptor type the hook yields (each with a unique ``name``).
    spec_type: type[Any]
    #: What one of them is called in messages and listings: ``"policy"``, ``"telemetry sink"``.
    kind: str
    #: The configuration key that chooses implementations by name (``None``: chosen on the command line).
    config_key: str | None
    #: Whether the key names several (a list: every one is used) or exactly one.
    many: bool = False
    #: What the chosen implementation is for, in one sentence (the hookspec's docstring starts with it).
    summary: str
    #: The protocol the descriptor's factory must return an instance of.
    protocol: str
    #: Who resolves the hook, and when.
    called_by: str
    #: A complete ``@hookimpl`` for the hookspec's docstring (indented by four spaces there).
    example: str

    def choice(self) -> str:
        """How a run chooses: ``tamiyo.policy = "NAME"`` / ``nissa.sinks = ["NAME", ...]``."""
        if self.config_key is None:
            return "chosen on the command line"
        value = '["NAME", ...]' if self.many else '"NAME"'
        return f"chosen by ``{self.config_key} = {value}``"


POLICIES = PluginPoint(
    hook="esper_tamiyo_policies",
    spec_type=PolicySpec,
    kind="policy",
    config_key="tamiyo.policy",
    summary="Tamiyo policies: given a state packet and the blueprints on offer, propose one command.",
    protocol="esper_core.protocols.TamiyoPolicy",
    called_by="the registry at setup, when the controller resolves its policy.",
    example="""\
class AlwaysWait:
    name = "always-wait"
    def decide(self, state, blueprints):
        return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)

@hookimpl
def esper_tamiyo_policies():
    yield PolicySpec(name="always-wait", factory=lambda context: AlwaysWait())""",
)

CONTROLLERS = PluginPoint(
    hook="esper_tolaria_controllers",
    spec_type=ControllerSpec,
    kind="controller",
    config_key="tolaria.controller",
    summary=(
        "Controllers Tolaria consults at decision points: they turn a state packet into one signed command "
        "(risk engine, signing and field reports around a policy, or a remote service)."
    ),
    protocol="esper_core.protocols.Controller",
    called_by="Tolaria at setup.",
    example="""\
@hookimpl
def esper_tolaria_controllers():
    yield ControllerSpec(name="tamiyo", factory=build_controller, options=ControllerOptions)""",
)

BLUEPRINT_CATALOGS = PluginPoint(
    hook="esper_urza_blueprint_catalogs",
    spec_type=BlueprintCatalogSpec,
    kind="blueprint catalog",
    config_key="urza.catalogs",
    many=True,
    summary="Blueprint catalogs: the seed modules a run may germinate, with their bounds and risk.",
    protocol="esper_core.protocols.BlueprintCatalog",
    called_by="the registry at setup, for the seed executor, the artifact store and the controller.",
    example="""\
@hookimpl
def esper_urza_blueprint_catalogs():
    yield BlueprintCatalogSpec(name="acme", factory=lambda context: AcmeCatalog())""",
)

ARTIFACT_STORES = PluginPoint(
    hook="esper_urza_artifact_stores",
    spec_type=ArtifactStoreSpec,
    kind="artifact store",
    config_key="urza.store",
    summary="Blueprint artifact stores: they serve a germinating seed's module, built and checked, for its slot.",
    protocol="esper_core.protocols.ArtifactStore",
    called_by="Tolaria at setup; the seed executor fetches from the store when a seed germinates.",
    example="""\
@hookimpl
def esper_urza_artifact_stores():
    yield ArtifactStoreSpec(name="urza", factory=build_library, options=LibraryOptions)""",
)

TELEMETRY_SINKS = PluginPoint(
    hook="esper_nissa_telemetry_sinks",
    spec_type=TelemetrySinkSpec,
    kind="telemetry sink",
    config_key="nissa.sinks",
    many=True,
    summary="Telemetry sinks: every sink chosen receives every telemetry packet.",
    protocol="esper_core.protocols.TelemetrySink",
    called_by="the registry at setup; the sinks are then fed from the telemetry stream at decision points.",
    example="""\
class PrintSink:
    def emit(self, packet):
        print(packet.source_subsystem, len(packet.metrics))
    def flush(self): ...
    def close(self): ...

@hookimpl
def esper_nissa_telemetry_sinks():
    yield TelemetrySinkSpec(name="print", factory=lambda context: PrintSink())""",
)

BUS_BACKENDS = PluginPoint(
    hook="esper_oona_bus_backends",
    spec_type=BusBackendSpec,
    kind="bus backend",
    config_key="oona.backend",
    summary=(
        "Oona bus backends, chosen by name or by a URL whose scheme the backend declares "
        '(``oona.backend = "redis://127.0.0.1:6379/0"``).'
    ),
    protocol="esper_core.oona.BusBackend",
    called_by="the registry when a run or service opens its bus.",
    example="""\
@hookimpl
def esper_oona_bus_backends():
    yield BusBackendSpec(name="memory", factory=lambda context: MemoryBackend())""",
)

TASKS = PluginPoint(
    hook="esper_tolaria_tasks",
    spec_type=TaskSpec,
    kind="task",
    config_key="run.task",
    summary="Tasks: a host model, its data, loss and metric.",
    protocol="esper_core.protocols.Task",
    called_by="Tolaria at setup.",
    example="""\
@hookimpl
def esper_tolaria_tasks():
    yield TaskSpec(name="my-task", factory=lambda context: MyTask(context.options), options=MyOptions)""",
)

SEED_EXECUTORS = PluginPoint(
    hook="esper_tolaria_seed_executors",
    spec_type=SeedExecutorSpec,
    kind="seed executor",
    config_key="tolaria.seed_executor",
    summary=(
        "Seed executors Tolaria hands commands to: the component that owns the seed slots in the host and "
        "applies adaptation commands."
    ),
    protocol="esper_core.protocols.SeedExecutor",
    called_by="Tolaria at setup.",
    example="""\
@hookimpl
def esper_tolaria_seed_executors():
    yield SeedExecutorSpec(name="kasmina", factory=build_kasmina, options=KasminaOptions)""",
)

SERVICES = PluginPoint(
    hook="esper_weatherlight_services",
    spec_type=ServiceSpec,
    kind="service",
    config_key="weatherlight.services",
    many=True,
    summary="Long-lived services that ``esper serve NAME`` runs under the Weatherlight supervisor.",
    protocol="esper_core.protocols.Service",
    called_by="Weatherlight at startup.",
    example="""\
@hookimpl
def esper_weatherlight_services():
    yield ServiceSpec(name="tamiyo", factory=build_tamiyo_service)""",
)

SIMIC_TRAINERS = PluginPoint(
    hook="esper_simic_trainers",
    spec_type=SimicTrainerSpec,
    kind="Simic trainer",
    config_key="simic.trainer",
    summary=(
        "Simic training algorithms: given a trainable policy and episodes of its encoded decisions with their rewards, "
        "return new weights for it."
    ),
    protocol="esper_core.protocols.SimicTrainer",
    called_by="``esper simic train`` and ``esper serve simic``, once per training.",
    example="""\
class ImitateOnly:
    name = "imitate"
    def train(self, policy, episodes, *, checkpoint=None, progress=None):
        network = policy.clone_network()
        ...  # fit network to the demonstrated actions
        return TrainingOutcome(state_dict=network.state_dict(), curves=[])

@hookimpl
def esper_simic_trainers():
    yield SimicTrainerSpec(name="imitate", factory=lambda context: ImitateOnly())""",
)

CLI_COMMANDS = PluginPoint(
    hook="esper_core_cli_commands",
    spec_type=CliCommandSpec,
    kind="command",
    config_key=None,
    many=True,
    summary="Subcommands of the ``esper`` command line (``esper report`` comes from esper-nissa this way).",
    protocol="",
    called_by="``esper`` when it builds its argument parser.",
    example="""\
def configure(parser):
    parser.add_argument("run_dir")

def run(args):
    print("hello", args.run_dir)
    return 0

@hookimpl
def esper_core_cli_commands():
    yield CliCommandSpec(name="hello", help="Say hello to a run.", configure=configure, run=run)""",
)

#: Every plugin point, in the order ``esper plugins`` and the docs list them.
PLUGIN_POINTS: tuple[PluginPoint, ...] = (
    POLICIES,
    CONTROLLERS,
    BLUEPRINT_CATALOGS,
    ARTIFACT_STORES,
    TELEMETRY_SINKS,
    BUS_BACKENDS,
    TASKS,
    SEED_EXECUTORS,
    SERVICES,
    SIMIC_TRAINERS,
    CLI_COMMANDS,
)

_BY_TYPE: dict[type, PluginPoint] = {point.spec_type: point for point in PLUGIN_POINTS}
_BY_HOOK: dict[str, PluginPoint] = {point.hook: point for point in PLUGIN_POINTS}


def point_of(spec_type: type) -> PluginPoint:
    """The plugin point whose hook yields ``spec_type`` descriptors (a subclass finds its base's point)."""
    for cls in spec_type.__mro__:
        if cls in _BY_TYPE:
            return _BY_TYPE[cls]
    raise KeyError(f"{spec_type.__name__} is not the descriptor type of any plugin point")


def point_for_hook(hook: str) -> PluginPoint | None:
    """The plugin point of a provider hook, or ``None`` for any other hook."""
    return _BY_HOOK.get(hook)
