"""Plugins fail loudly, harmlessly: real runs of the synthetic task with test plugins that raise.

A policy that raises: one console line naming its distribution and the exception, the traceback in the run
directory, a ``plugin_error`` entry per failure, conservative mode after ``tolaria.failures_to_conservative`` in a
row, and the summary's count. A catalog whose build raises: the germination fails safely and the blueprint is
quarantined for the run (never offered or applied again). An executor whose ``apply`` raises: the command fails and
the run goes on. A seed module that raises in the forward pass: rolled back, culled, quarantined. A task whose loss
raises: the epoch is trained again, then the run stops resumably, and the resumed run keeps the counts. And the
mechanism itself (esper_core.plugin_failures) on its own.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from rich.console import Console
from torch import nn

from esper_core import hookimpl
from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    SeedOperation,
    SlotKind,
    SystemStatePacket,
)
from esper_core.leyline.annotations import OFFERED_BLUEPRINTS, POLICY_ERROR
from esper_core.plugin_failures import (
    DIRECTORY,
    Blame,
    Origin,
    PluginFailure,
    PluginFailureLedger,
    blame,
    blamed,
    failure_of,
    first_argument,
    guard,
    origin_of,
)
from esper_core.plugins import BlueprintCatalogSpec, PolicySpec, Registry, SeedExecutorSpec, TaskSpec
from esper_core.protocols import SlotShape
from esper_core.tolaria.assembly import RunError, reopen_run, start_run
from esper_core.tolaria.console import RunDisplay, print_summary
from esper_core.tolaria.record import decode_message, read_record
from esper_core.tolaria.trainer import Summary, Trainer

from tolaria_runs import BASE

pytestmark = pytest.mark.slow

#: No rating on first use: these tests are about what happens when a build raises in the run itself (Urabrask's
#: crucible would otherwise meet the broken blueprint first, and quarantine it by measurement).
QUICK = [*BASE, "nissa.report.automatic=false", "urza.urabrask.rate_on_first_use=false"]
DISTRIBUTION, VERSION = "acme-esper", "1.2.3"


# -- test plugins ---------------------------------------------------------------------------------------------------


class ExplodingPolicy:
    name = "explode"

    def decide(self, state: SystemStatePacket, blueprints: Any) -> AdaptationCommand:
        raise RuntimeError("the policy exploded")


def _descriptor(blueprint_id: str, name: str) -> BlueprintDescriptor:
    return BlueprintDescriptor(
        blueprint_id=blueprint_id, name=name, tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.1,
        slot_kinds=[SlotKind.SLOT_KIND_VECTOR], catalog="brittle",
        allowed_parameters={"healthy": BlueprintParameterBounds(min_value=0, max_value=10_000, default_value=45,
                                                                integer=True)},
    )  # fmt: skip


class RaisesLater(nn.Module):
    """A zero-started residual seed that raises after ``healthy`` forward passes in training mode."""

    def __init__(self, width: int, healthy: int) -> None:
        super().__init__()
        self.inner, self.outer = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)
        self.healthy, self.calls = healthy, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls > self.healthy:
                raise FloatingPointError("the seed module gave up")
        output: torch.Tensor = self.outer(torch.relu(self.inner(x)))
        return output


class BrittleCatalog:
    """BP991, whose build raises; BP992, whose modules raise in the forward pass after a while."""

    name = "brittle"
    builds: ClassVar[dict[str, int]] = {}
    #: What it heard of quarantines (esper_core.protocols.QuarantineListener: where sheets would be marked).
    heard: ClassVar[list[tuple[str, str, str]]] = []

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [_descriptor("BP991", "divides_by_zero"), _descriptor("BP992", "gives_up")]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        BrittleCatalog.builds[blueprint_id] = BrittleCatalog.builds.get(blueprint_id, 0) + 1
        if blueprint_id == "BP991":
            return nn.Linear(1, 1) if 1 / 0 else nn.Identity()
        return RaisesLater(slot.shape[-1], int(parameters.get("healthy", 45)))

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        width = slot.shape[-1]
        return 2 * (width * width + width)

    def blueprint_quarantined(self, blueprint_id: str, *, catalog: str, reason: str) -> None:
        BrittleCatalog.heard.append((blueprint_id, catalog, reason))


#: The flaky task's switch: its training loss raises once ``calls`` passes ``after`` (while ``failing``).
FLAKY: dict[str, Any] = {"after": 28, "failing": True, "calls": 0}


class FlakyTask:
    """The synthetic task, whose training loss raises as FLAKY says (with BASE: 15 training steps an epoch, and 9
    losses with gradients at each decision point: 1 for the executor's probes, 8 for Tolaria's gradient measurements
    on the probe's micro-batches)."""

    name = "flaky"

    def __init__(self) -> None:
        from esper_core.tasks.synthetic import SyntheticTask

        self.inner = SyntheticTask()

    def build_model(self) -> Any:
        return self.inner.build_model()

    def slot_points(self) -> list[str]:
        return self.inner.slot_points()

    def data(self) -> Any:
        return self.inner.data()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            FLAKY["calls"] += 1
            if FLAKY["failing"] and FLAKY["calls"] > FLAKY["after"]:
                raise ValueError("the labels went missing")
        loss: torch.Tensor = self.inner.loss(outputs, targets)
        return loss

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.inner.correct(outputs, targets)
        return result


class FragileExecutor:
    """Kasmina, except that ``apply`` raises for a germination."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def apply(self, command: AdaptationCommand) -> Any:
        if command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE:
            raise OSError("the disk is on fire")
        return self.inner.apply(command)


def _fragile(context: Any) -> FragileExecutor:
    from esper_kasmina.plugin import build_kasmina

    return FragileExecutor(build_kasmina(context))


class AcmePlugin:
    @hookimpl
    def esper_tamiyo_policies(self) -> list[PolicySpec]:
        return [PolicySpec(name="explode", factory=lambda context: ExplodingPolicy())]

    @hookimpl
    def esper_urza_blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return [BlueprintCatalogSpec(name="brittle", factory=lambda context: BrittleCatalog())]

    @hookimpl
    def esper_tolaria_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="flaky", factory=lambda context: FlakyTask())]

    @hookimpl
    def esper_tolaria_seed_executors(self) -> list[SeedExecutorSpec]:
        from esper_kasmina.options import KasminaOptions

        return [SeedExecutorSpec(name="fragile", factory=_fragile, options=KasminaOptions)]


def registry() -> Registry:
    made = Registry.create(env={})
    made.pm.register(AcmePlugin(), name="acme", distribution=DISTRIBUTION, version=VERSION)
    made.invalidate()
    return made


def schedule(*epochs: int, blueprint: str) -> list[str]:
    entries = ", ".join(f'{{epoch = {e}, blueprint = "{blueprint}"}}' for e in epochs)
    return ["tamiyo.policy=fixed-schedule", f"tamiyo.fixed-schedule.germinations=[{entries}]"]


def train(tmp_path: Path, *settings: str) -> tuple[Summary, Path, str]:
    """A run with the test plugins, shown on a console as ``esper run`` shows it; returns what the console said."""
    plugins = registry()
    config = plugins.load_config(env={}, overrides=[*QUICK, f"run.runs_dir={tmp_path}", *settings])
    run = start_run(plugins, config)
    trainer = Trainer(run)
    console = Console(file=io.StringIO(), width=400, color_system=None)
    try:
        with RunDisplay(trainer, console):
            summary = trainer.fit()
        print_summary(console, summary, run.run_dir)
    finally:
        trainer.close()
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return summary, run.run_dir, output


def entries(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [entry for entry in read_record(run_dir) if entry["kind"] == kind]


# -- a policy that raises -------------------------------------------------------------------------------------------


def test_a_raising_policy_is_one_line_a_traceback_file_record_entries_and_conservative_mode(tmp_path: Path) -> None:
    summary, run_dir, output = train(
        tmp_path, "run.name=policy", "run.epochs=4", "tamiyo.policy=explode",
        "tolaria.failures_to_conservative=2", "tolaria.conservative_for=1",
    )  # fmt: skip
    # Epochs 1 and 2 fail (conservative mode for one decision point: epoch 3), epoch 4 fails again.
    lines = [line for line in output.splitlines() if line.startswith("plugin error:")]
    assert len(lines) == 1, output
    (line,) = lines
    assert "policy 'explode'" in line and f"distribution {DISTRIBUTION!r} {VERSION}" in line
    assert "RuntimeError: the policy exploded" in line and "a safe no-op was decided instead" in line
    assert [line for line in output.splitlines() if line.startswith("conservative mode:")] != []
    assert output.count("conservative mode:") == 1
    assert "wait (policy error)" in output

    (traceback_file,) = sorted((run_dir / DIRECTORY).iterdir())  # the same traceback three times: one file
    assert traceback_file.name == "001-policy-explode.txt"
    text = traceback_file.read_text()
    assert "Traceback (most recent call last)" in text and 'raise RuntimeError("the policy exploded")' in text
    assert f"distribution {DISTRIBUTION!r}" in text

    errors = entries(run_dir, "plugin_error")
    assert [entry["epoch"] for entry in errors] == [1, 2, 4]
    first = errors[0]
    assert {key: first[key] for key in ("plugin_kind", "plugin", "distribution", "during", "error_type")} == {
        "plugin_kind": "policy", "plugin": "explode", "distribution": f"{DISTRIBUTION} {VERSION}",
        "during": "decide", "error_type": "RuntimeError",
    }  # fmt: skip
    assert first["message"] == "the policy exploded" and first["traceback"] == f"{DIRECTORY}/001-policy-explode.txt"
    assert [entry["count"] for entry in errors] == [1, 2, 3]
    (conservative,) = entries(run_dir, "conservative_mode")
    assert conservative["epoch"] == 2 and conservative["decision_points"] == 1
    decisions = entries(run_dir, "decision")
    assert [bool(entry["policy_error"]) for entry in decisions] == [True, True, False, True]
    assert "conservative mode" in decisions[2]["rationale"]

    assert summary.plugin_errors == {"policy:explode": {"RuntimeError": 3}}
    assert "policy 'explode': 3 RuntimeError" in output
    (finished,) = entries(run_dir, "run_finished")
    assert finished["plugin_errors"] == {"policy:explode": {"RuntimeError": 3}}


class AnnotatingController:
    """A controller that keeps no tracebacks (one in another process, say): a policy error reaches Tolaria only as the
    command's ``tamiyo.policy_error`` annotation."""

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        command = AdaptationCommand(command_type=CommandType.COMMAND_NOOP)
        command.annotations[POLICY_ERROR] = "policy 'far-away' failed: MemoryError: out of memory"
        return command

    def observe(self, *args: Any) -> list[Any]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None: ...

    def close(self) -> None: ...


def test_a_policy_error_reported_only_in_the_command_is_written_down_without_a_traceback(tmp_path: Path) -> None:
    plugins = registry()
    config = plugins.load_config(env={}, overrides=[*QUICK, f"run.runs_dir={tmp_path}", "run.name=far", "run.epochs=1"])
    trainer = Trainer(start_run(plugins, config))
    trainer.run.controller = AnnotatingController()
    try:
        trainer.fit()
    finally:
        trainer.close()
    (error,) = entries(trainer.run.run_dir, "plugin_error")
    assert (error["plugin_kind"], error["plugin"], error["error_type"], error["message"]) == (
        "policy", "far-away", "MemoryError", "out of memory",
    )  # fmt: skip
    assert "no traceback" in (trainer.run.run_dir / error["traceback"]).read_text()


# -- a catalog whose build raises -----------------------------------------------------------------------------------


def test_a_catalog_whose_build_raises_gets_the_blueprint_quarantined_and_the_run_finishes(tmp_path: Path) -> None:
    BrittleCatalog.builds.clear()
    BrittleCatalog.heard.clear()
    summary, run_dir, output = train(
        tmp_path, "run.name=brittle", "run.epochs=3", 'urza.catalogs=["brittle"]', *schedule(1, 2, blueprint="BP991")
    )
    assert summary.epochs == 3 and summary.quarantined == ["BP991"]
    assert BrittleCatalog.builds == {"BP991": 1}, "a blueprint whose build raised is never built again in the run"
    assert BrittleCatalog.heard == [("BP991", "brittle", "its build raised ZeroDivisionError: division by zero")]
    decisions = entries(run_dir, "decision")
    assert decisions[0]["blueprint"] == "BP991" and decisions[0]["status"] == "REJECTED_GATE"
    (error,) = entries(run_dir, "plugin_error")
    assert (error["plugin_kind"], error["plugin"], error["during"], error["subject"], error["error_type"]) == (
        "blueprint catalog", "brittle", "build", "BP991", "ZeroDivisionError",
    )  # fmt: skip
    assert "quarantined for the rest of the run" in error["consequence"]
    (quarantine,) = entries(run_dir, "quarantine")
    assert quarantine["blueprint"] == "BP991" and quarantine["catalog"] == "brittle" and quarantine["epoch"] == 1
    # Epoch 2's scheduled germination finds BP991 no longer on offer.
    later = decode_message(decisions[1]["command"], AdaptationCommand)
    assert "BP991" not in later.annotations[OFFERED_BLUEPRINTS] and decisions[1]["operation"] == "noop"
    state = decode_message(decisions[1]["packet"], SystemStatePacket)
    assert list(state.quarantined_blueprints) == ["BP991"] and not state.extras
    lines = [line for line in output.splitlines() if line.startswith("plugin error:")]
    assert len(lines) == 1 and "blueprint catalog 'brittle'" in lines[0] and "ZeroDivisionError" in lines[0]
    assert "quarantined blueprints" in output and "BP991" in output
    assert summary.plugin_errors == {"blueprint catalog:brittle": {"ZeroDivisionError": 1}}


def test_tolaria_refuses_to_apply_a_germination_of_a_quarantined_blueprint(tmp_path: Path) -> None:
    """Whatever the controller: a command it signs for a quarantined blueprint is refused before the executor."""
    plugins = registry()
    config = plugins.load_config(env={}, overrides=[*QUICK, f"run.runs_dir={tmp_path}", 'urza.catalogs=["brittle"]'])
    trainer = Trainer(start_run(plugins, config))
    try:
        trainer.failures.quarantine("BP991", catalog="brittle", reason="its build raised", epoch=1, traceback_file="")
        command = trainer.signer.sign(
            AdaptationCommand(
                command_type=CommandType.COMMAND_SEED, target_slot_id="layers.0",
                seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id="BP991"),
            )
        )  # fmt: skip
        result, _ = trainer._apply(command)
    finally:
        trainer.close()
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL and "quarantined" in result.detail


# -- an executor whose apply raises ---------------------------------------------------------------------------------


def test_an_executor_whose_apply_raises_fails_the_command_and_the_run_goes_on(tmp_path: Path) -> None:
    summary, run_dir, output = train(
        tmp_path, "run.name=fragile", "run.epochs=3", "tolaria.seed_executor=fragile", *schedule(1, blueprint="BP052")
    )
    assert summary.epochs == 3 and summary.fossilized == 0 and summary.parameters == summary.host_parameters
    decision = entries(run_dir, "decision")[0]
    assert decision["status"] == "FAILED" and "OSError: the disk is on fire" in decision["detail"]
    (error,) = entries(run_dir, "plugin_error")
    assert (error["plugin_kind"], error["plugin"], error["during"], error["error_type"]) == (
        "seed executor", "fragile", "apply", "OSError",
    )  # fmt: skip
    assert entries(run_dir, "transition") == [], "no slot changed"
    assert summary.plugin_errors == {"seed executor:fragile": {"OSError": 1}}
    assert "seed executor 'fragile': 1 OSError" in output


# -- a seed module that raises --------------------------------------------------------------------------------------


def test_a_seed_module_that_raises_in_training_is_rolled_back_culled_and_quarantined(tmp_path: Path) -> None:
    summary, run_dir, _ = train(
        tmp_path, "run.name=gives-up", "run.epochs=6", 'urza.catalogs=["brittle"]', *schedule(1, blueprint="BP992")
    )
    assert summary.epochs == 6 and summary.rollbacks == 1 and summary.quarantined == ["BP992"]
    (rollback,) = entries(run_dir, "rollback")
    assert rollback["culled"] == ["layers.0"] and "FloatingPointError" in rollback["reason"]
    (error,) = entries(run_dir, "plugin_error")
    assert (error["plugin_kind"], error["plugin"], error["during"], error["subject"], error["slot"]) == (
        "blueprint catalog", "brittle", "forward", "BP992", "layers.0",
    )  # fmt: skip
    assert [entry["epoch"] for entry in entries(run_dir, "epoch")] == [1, 2, 3, 4, 5, 6]


# -- a task whose loss raises ---------------------------------------------------------------------------------------


def test_a_task_whose_loss_raises_is_retried_then_stops_resumably_and_the_resume_keeps_the_counts(
    tmp_path: Path,
) -> None:
    FLAKY.update(after=28, failing=True, calls=0)  # epoch 1 goes by (24 losses), epoch 2 raises at its 5th step
    plugins = registry()
    settings = [*QUICK, f"run.runs_dir={tmp_path}", "run.name=flaky", "run.task=flaky", "run.epochs=3",
                "tolaria.failed_epochs_to_stop=2"]  # fmt: skip
    run = start_run(plugins, plugins.load_config(env={}, overrides=settings))
    trainer = Trainer(run)
    notices: list[tuple[str, str]] = []
    trainer.on_notice = lambda what, line: notices.append((what, line))
    try:
        with pytest.raises(RunError) as stopped:
            trainer.fit()
    finally:
        trainer.close()
    message = str(stopped.value)
    assert "task 'flaky'" in message and "ValueError: the labels went missing" in message
    assert f"esper run --resume {run.run_dir}" in message and "2 failed epochs in a row" in message
    assert len(notices) == 1 and notices[0][0] == "plugin error" and "trained again" in notices[0][1]
    errors = entries(run.run_dir, "plugin_error")
    assert [(entry["epoch"], entry["plugin_kind"], entry["during"]) for entry in errors] == [
        (2, "task", "loss"), (2, "task", "loss"),
    ]  # fmt: skip
    assert "trained again" in errors[0]["consequence"] and "the run stops" in errors[1]["consequence"]

    FLAKY["failing"] = False  # the plugin is fixed; the run resumes from its checkpoint of epoch 1
    resumed = Trainer(reopen_run(registry(), run.run_dir))
    try:
        loaded = resumed.restore_latest()
        assert loaded is not None and resumed.history.epoch == 1
        summary = resumed.fit()
    finally:
        resumed.close()
    assert summary.epochs == 3 and summary.plugin_errors == {"task:flaky": {"ValueError": 2}}
    assert len(entries(run.run_dir, "plugin_error")) == 2


# -- the mechanism on its own ---------------------------------------------------------------------------------------


class Store:
    def fetch(self, blueprint_id: str, slot: Any, parameters: Any) -> Any:
        if blueprint_id == "missing":
            raise KeyError(blueprint_id)  # a documented refusal
        raise ConnectionError("the artifact server hung up")

    def close(self) -> None: ...


def test_a_guard_blames_the_innermost_plugin_and_never_a_refusal() -> None:
    catalog = guard(BrittleCatalog(), kind="blueprint catalog", name="brittle", refusals={"build": ()},
                    subjects={"build": first_argument("blueprint_id")})  # fmt: skip
    store = guard(Store(), kind="artifact store", name="remote", refusals={"fetch": (KeyError,)})
    with pytest.raises(ZeroDivisionError) as raised:
        catalog.build("BP991", SlotShape(SlotKind.SLOT_KIND_VECTOR, (4,)), {})
    found = blamed(raised.value)
    assert found is not None and found[0] == Blame(
        "blueprint catalog", "brittle", "build", subject="BP991", module=__name__
    )
    with pytest.raises(KeyError) as refused:
        store.fetch("missing", None, {})
    assert blamed(refused.value) is None
    with pytest.raises(ConnectionError) as crashed:
        store.fetch("BP001", None, {})
    assert failure_of(crashed.value) is not None
    # Raised inside another plugin's call (a build inside a fetch): the inner plugin keeps the blame.
    inner = RuntimeError("inner")
    blame(inner, Blame("blueprint catalog", "brittle", "build"))
    try:
        try:
            raise inner
        except RuntimeError as error:
            raise LookupError("outer") from error
    except LookupError as outer:
        blame(outer, Blame("artifact store", "remote", "fetch"))
        failure = failure_of(outer)
    assert failure is not None and (failure.kind, failure.error_type, failure.message) == (
        "blueprint catalog", "RuntimeError", "inner",
    )  # fmt: skip
    assert "LookupError: outer" in failure.traceback, "the traceback shows the whole chain"
    store.close()  # a method that does not raise is just called


class Record:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, **fields: Any) -> None:
        self.entries.append((kind, fields))


def failure(error_type: str = "RuntimeError", trace: str = "Traceback: line 1\n") -> PluginFailure:
    return PluginFailure("telemetry sink", "es", "emit", error_type, "connection reset", trace)


def test_the_ledger_writes_each_traceback_once_counts_and_announces_once_per_type(tmp_path: Path) -> None:
    record, said = Record(), list[str]()
    origin = Origin("acme-esper", "1.2.3", "distribution 'acme-esper' 1.2.3")
    ledger = PluginFailureLedger(tmp_path, record, origin=lambda _: origin, announce=said.append)
    first = ledger.report(failure(), epoch=1, consequence="the packet was dropped")
    again = ledger.report(failure(), epoch=2, consequence="the packet was dropped")
    other = ledger.report(failure(trace="Traceback: line 2\n"), epoch=2, consequence="the packet was dropped")
    typed = ledger.report(failure("OSError"), epoch=3, consequence="the packet was dropped")
    assert first.traceback_file == again.traceback_file == f"{DIRECTORY}/001-telemetry-sink-es.txt"
    assert other.traceback_file.startswith(f"{DIRECTORY}/002-") and typed.traceback_file.startswith(f"{DIRECTORY}/003-")
    assert (first.announced, again.announced, other.announced, typed.announced) == (True, False, False, True)
    assert len(said) == 2 and "telemetry sink 'es' from distribution 'acme-esper' 1.2.3" in said[0]
    assert ledger.counts == {"telemetry sink:es": {"RuntimeError": 3, "OSError": 1}} and ledger.total == 4
    assert [kind for kind, _ in record.entries] == ["plugin_error"] * 4
    assert record.entries[0][1]["distribution"] == "acme-esper 1.2.3"
    assert not list((tmp_path / DIRECTORY).glob(".*.tmp")), "written atomically: no temporary files left"

    restored = PluginFailureLedger(tmp_path, Record(), origin=lambda _: origin)
    restored.load_state_dict(ledger.state_dict())
    assert restored.counts == ledger.counts
    later = restored.report(failure("ValueError"), epoch=4, consequence="dropped")
    assert later.traceback_file.startswith(f"{DIRECTORY}/004-"), "numbers go on after a resume: nothing overwritten"


def test_a_plugin_is_traced_to_its_distribution(tmp_path: Path) -> None:
    plugins = registry()
    assert origin_of(plugins, "policy", "explode") == Origin(
        DISTRIBUTION, VERSION, f"distribution {DISTRIBUTION!r} {VERSION}"
    )
    tamiyo = origin_of(plugins, "policy", "heuristic")
    assert tamiyo.distribution == "esper-tamiyo"
    by_module = origin_of(None, "task", "rings:build", "torch.nn")
    assert by_module.distribution == "torch"
    nowhere = origin_of(plugins, "task", "rings_task:build", "rings_task")
    assert nowhere.distribution is None and "rings_task" in nowhere.described


@pytest.fixture(autouse=True)
def _reset_flaky() -> Iterator[None]:
    yield
    FLAKY.update(after=28, failing=True, calls=0)
