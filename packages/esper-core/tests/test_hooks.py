"""One test per hookspec (``test_hook_<name>``), each driving the hook through the registry the way Esper does.

``test_every_hook_has_a_test`` keeps this module complete: a new hookspec without a test here fails the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core import hookimpl
from esper_core.config import section
from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandStatus,
    FieldReport,
    FieldReportOutcome,
    SeedLifecycleEvent,
    SeedLifecycleStage,
    SystemStatePacket,
)
from esper_core.plugins import (
    ArtifactStoreSpec,
    BlueprintCatalogSpec,
    BusBackendSpec,
    CliCommandSpec,
    ControllerSpec,
    PolicySpec,
    Registry,
    RunInfo,
    SeedExecutorSpec,
    ServiceSpec,
    SimicTrainerSpec,
    TaskSpec,
    TelemetrySinkSpec,
)
from esper_core.plugins.hookspecs import ALL_SPECS


def hookspec_names() -> list[str]:
    return sorted(name for spec in ALL_SPECS for name in vars(spec) if name.startswith("esper_"))


def test_every_hook_has_a_test() -> None:
    tests = {name for name in dir(sys.modules[__name__]) if name.startswith("test_hook_")}
    missing = [name for name in hookspec_names() if f"test_hook_{name}" not in tests]
    assert not missing, f"hooks without a test_hook_<name> in {Path(__file__).name}: {missing}"


def _provider_roundtrip(register: Any, registry: Registry, hook: str, spec: Any, lookup: str) -> Any:
    plugin = type("Plugin", (), {hook: hookimpl(lambda self: [spec])})()
    register(plugin, name="test-plugin")
    found = getattr(registry, lookup)(spec.name)
    assert found is spec
    assert registry.provider_of(spec).name == "test-plugin"
    return found


def test_hook_esper_core_addhooks(register_plugin: Any, esper_plugin_manager: Any) -> None:
    class ExtraSpecs:
        from esper_core.plugins import hookspec

        @hookspec
        def acme_extra(self) -> int: ...

    class Adds:
        @hookimpl
        def esper_core_addhooks(self, pluginmanager: Any) -> None:
            pluginmanager.add_hookspecs(ExtraSpecs)

    class Uses:
        @hookimpl
        def acme_extra(self) -> int:
            return 7

    register_plugin(Adds())  # historic: replayed at registration
    register_plugin(Uses())
    assert esper_plugin_manager.hook.acme_extra() == [7]


def test_hook_esper_core_config_sections(register_plugin: Any, esper_registry: Registry) -> None:
    @section("acme")
    @attrs.frozen
    class AcmeOptions:
        verbose: bool = False

    class Plugin:
        @hookimpl
        def esper_core_config_sections(self) -> list[type]:
            return [AcmeOptions]

    register_plugin(Plugin())
    config = esper_registry.load_config(overrides=["acme.verbose=true"], env={})
    assert config.get(AcmeOptions).verbose is True


def test_hook_esper_core_cli_commands(register_plugin: Any, esper_registry: Registry) -> None:
    spec = CliCommandSpec(name="hello", help="say hello", configure=lambda parser: None, run=lambda args: 0)

    class Plugin:
        @hookimpl
        def esper_core_cli_commands(self) -> list[CliCommandSpec]:
            return [spec]

    register_plugin(Plugin())
    assert esper_registry.cli_commands() == [spec]


def test_hook_esper_tamiyo_policies(register_plugin: Any, esper_registry: Registry) -> None:
    spec = PolicySpec(name="always-wait", factory=lambda context: "policy")
    _provider_roundtrip(register_plugin, esper_registry, "esper_tamiyo_policies", spec, "policy")
    assert esper_registry.build(spec) == "policy"


def test_hook_esper_tolaria_controllers(register_plugin: Any, esper_registry: Registry) -> None:
    spec = ControllerSpec(name="local", factory=lambda context: context.services["executor"])
    _provider_roundtrip(register_plugin, esper_registry, "esper_tolaria_controllers", spec, "controller")
    assert esper_registry.build(spec, executor="kasmina") == "kasmina"


def test_hook_esper_urza_blueprint_catalogs(register_plugin: Any, esper_registry: Registry) -> None:
    spec = BlueprintCatalogSpec(name="acme", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_urza_blueprint_catalogs", spec, "blueprint_catalog")


def test_hook_esper_urza_artifact_stores(register_plugin: Any, esper_registry: Registry, tmp_path: Path) -> None:
    spec = ArtifactStoreSpec(name="store", factory=lambda context: context.run_dir)
    _provider_roundtrip(register_plugin, esper_registry, "esper_urza_artifact_stores", spec, "artifact_store")
    assert esper_registry.build(spec, run_dir=tmp_path) == tmp_path


def test_hook_esper_nissa_telemetry_sinks(register_plugin: Any, esper_registry: Registry) -> None:
    spec = TelemetrySinkSpec(name="print", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_nissa_telemetry_sinks", spec, "telemetry_sink")


def test_hook_esper_oona_bus_backends(register_plugin: Any, esper_registry: Registry) -> None:
    spec = BusBackendSpec(name="fake-redis", factory=lambda context: None, url_schemes=("fakeredis",))
    _provider_roundtrip(register_plugin, esper_registry, "esper_oona_bus_backends", spec, "bus_backend")
    assert esper_registry.bus_backend("fakeredis://127.0.0.1:1/0") is spec
    assert esper_registry.bus_backend("memory").name == "memory"


def test_hook_esper_tolaria_tasks(register_plugin: Any, esper_registry: Registry) -> None:
    spec = TaskSpec(name="my-task", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_tolaria_tasks", spec, "task")


def test_hook_esper_tolaria_seed_executors(register_plugin: Any, esper_registry: Registry) -> None:
    spec = SeedExecutorSpec(name="kasmina", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_tolaria_seed_executors", spec, "seed_executor")


def test_hook_esper_weatherlight_services(register_plugin: Any, esper_registry: Registry) -> None:
    spec = ServiceSpec(name="tamiyo", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_weatherlight_services", spec, "service")


def test_hook_esper_simic_trainers(register_plugin: Any, esper_registry: Registry) -> None:
    spec = SimicTrainerSpec(name="imitate", factory=lambda context: None)
    _provider_roundtrip(register_plugin, esper_registry, "esper_simic_trainers", spec, "simic_trainer")


class Recorder:
    """Implements every lifecycle hook and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def esper_tolaria_run_started(self, run: RunInfo) -> None:
        self.calls.append(("run_started", {"run": run}))

    @hookimpl
    def esper_tolaria_decision(self, state: Any, command: Any, result: Any) -> None:
        self.calls.append(("decision", {"state": state, "command": command, "result": result}))

    @hookimpl
    def esper_kasmina_seed_transition(self, event: Any) -> None:
        self.calls.append(("seed_transition", {"event": event}))

    @hookimpl
    def esper_tamiyo_field_report(self, report: Any) -> None:
        self.calls.append(("field_report", {"report": report}))

    @hookimpl
    def esper_tolaria_run_finished(self, run: RunInfo, summary: Any) -> None:
        self.calls.append(("run_finished", {"run": run, "summary": summary}))


@pytest.fixture
def recorder(register_plugin: Any) -> Recorder:
    return register_plugin(Recorder())  # type: ignore[no-any-return]


@pytest.fixture
def run(esper_registry: Registry, tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r1", run_dir=tmp_path, config=esper_registry.load_config(env={}))


def test_hook_esper_tolaria_run_started(esper_registry: Registry, recorder: Recorder, run: RunInfo) -> None:
    esper_registry.run_started(run)
    assert recorder.calls == [("run_started", {"run": run})]


def test_hook_esper_tolaria_decision(esper_registry: Registry, recorder: Recorder) -> None:
    state, command = SystemStatePacket(current_epoch=2), AdaptationCommand(command_id="c")
    result = CommandResult(command_id="c", status=CommandStatus.COMMAND_STATUS_NOOP)
    esper_registry.decision(state, command, result)
    assert recorder.calls == [("decision", {"state": state, "command": command, "result": result})]


def test_hook_esper_kasmina_seed_transition(esper_registry: Registry, recorder: Recorder) -> None:
    event = SeedLifecycleEvent(slot_id="s", to_stage=SeedLifecycleStage.SEED_STAGE_GERMINATED)
    esper_registry.seed_transition(event)
    assert recorder.calls == [("seed_transition", {"event": event})]


def test_hook_esper_tamiyo_field_report(esper_registry: Registry, recorder: Recorder) -> None:
    report = FieldReport(report_id="r", outcome=FieldReportOutcome.FIELD_REPORT_OUTCOME_SUCCESS)
    esper_registry.field_report(report)
    assert recorder.calls == [("field_report", {"report": report})]


def test_hook_esper_tolaria_run_finished(esper_registry: Registry, recorder: Recorder, run: RunInfo) -> None:
    esper_registry.run_finished(run, {"test_accuracy": 0.9})
    assert recorder.calls == [("run_finished", {"run": run, "summary": {"test_accuracy": 0.9}})]


def test_hooks_may_take_fewer_arguments_than_the_spec(register_plugin: Any, esper_registry: Registry) -> None:
    seen: list[int] = []

    class Partial:
        @hookimpl
        def esper_tolaria_decision(self, state: SystemStatePacket) -> None:
            seen.append(state.current_epoch)

    register_plugin(Partial())
    esper_registry.decision(SystemStatePacket(current_epoch=4), AdaptationCommand(), CommandResult())
    assert seen == [4]
