"""docs/plugins.md works as printed: its ``stall`` policy, taken from the guide's code blocks, passes the policy
conformance suite, germinates, advances, fossilizes and culls when the guide says it does, resumes exactly from a
checkpoint, reports bad options as the guide shows, is held back by the risk rules the guide lists, and grows a seed
in a real run selected by name. The guide's SlotShape example and its test file run too."""

from __future__ import annotations

import functools
import io
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.errors import ConfigError
from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandType,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    lifecycle,
)
from esper_core.plugins import Registry
from esper_core.protocols import SlotShape
from esper_core.signing import SigningKey
from esper_core.testing.conformance import TamiyoPolicyConformance
from esper_core.testing.conformance.policy import check_command, decide_read_only
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Trainer

from tolaria_runs import BASE

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def code_block(first_line: str) -> str:
    """The one fenced code block of the guide whose first line is ``first_line``."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/plugins.md needs exactly one code block starting with {first_line!r}"
    return str(found[0])


def guide_module(name: str, first_line: str) -> types.ModuleType:
    """The guide's code block, run as module ``name`` (registered in ``sys.modules``, as an import would)."""
    module = types.ModuleType(name)
    module.__file__ = f"docs/plugins.md ({first_line})"
    sys.modules[name] = module
    exec(compile(code_block(first_line), module.__file__, "exec"), module.__dict__)
    return module


STALL = guide_module("plugins_guide_stall_policy", "# stall_policy.py")


def stall(**options: Any) -> Any:
    """A fresh ``stall`` policy with these options (validated as a run's configuration would be)."""
    return STALL.StallPolicy(STALL.StallOptions(**options))


@functools.cache
def karn_offered() -> tuple[BlueprintDescriptor, ...]:
    """Karn's SAFE blueprints: what the controller offers a policy under the default ``urza.allowed_tiers``."""
    registry = Registry.create(env={})
    catalog = registry.build(registry.blueprint_catalog("karn"))
    return tuple(d for d in catalog.descriptors() if d.tier == BlueprintTier.BLUEPRINT_TIER_SAFE)


def copies(descriptors: Sequence[BlueprintDescriptor]) -> list[BlueprintDescriptor]:
    return [BlueprintDescriptor.FromString(d.SerializeToString()) for d in descriptors]


# -- (a) the conformance suite --------------------------------------------------------------------------------------
class TestTheGuidesPolicyConforms(TamiyoPolicyConformance):
    @pytest.fixture
    def policy(self) -> Any:
        return stall()

    @pytest.fixture
    def blueprints(self) -> list[BlueprintDescriptor]:
        return copies(karn_offered())


class TestTheGuidesPolicyConformsWhenAskedForParametersOutOfBounds(TamiyoPolicyConformance):
    """Eager options and wishes far outside every blueprint's bounds: the commands must still be in bounds."""

    @pytest.fixture
    def policy(self) -> Any:
        wishes = {"scale": 99.0, "rank": -3.0, "alpha": 1e9, "hidden_multiple": 2.6, "epsilon": -1.0, "heads": 0.4}
        return stall(patience=1, max_in_flight=8, parameters=wishes)

    @pytest.fixture
    def blueprints(self) -> list[BlueprintDescriptor]:
        return copies(karn_offered())


# -- (b) scenarios --------------------------------------------------------------------------------------------------
VECTOR, CONV = SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_CONV2D
CONV_ONLY = BlueprintDescriptor(blueprint_id="BP801", slot_kinds=[CONV])
LORA = BlueprintDescriptor(
    blueprint_id="BP802",
    slot_kinds=[VECTOR, CONV],
    allowed_parameters={
        "rank": BlueprintParameterBounds(min_value=1, max_value=16, default_value=4, integer=True),
        "alpha": BlueprintParameterBounds(min_value=0.5, max_value=2.0, default_value=1.0),
    },
)
OFFERED = [CONV_ONLY, LORA]
FALLING = (1.0, 0.9, 0.8)  # each a real improvement: no stall


def slot(slot_id: str, stage: int = lifecycle.DORMANT, kind: int = VECTOR, **fields: Any) -> SeedState:
    return SeedState(slot_id=slot_id, stage=stage, slot_kind=kind, slot_shape=[32], **fields)


def packet(epoch: int, val_loss: float, seeds: Sequence[SeedState]) -> SystemStatePacket:
    metrics = TrainingMetrics(epoch=epoch, val_loss=val_loss, epochs_total=100)
    return SystemStatePacket(current_epoch=epoch, metrics=metrics, seeds=seeds)


def decide(policy: Any, state: SystemStatePacket, offered: Sequence[BlueprintDescriptor] = OFFERED) -> Any:
    """The policy's command, checked as the conformance suite checks every command."""
    offered = copies(offered)
    command = decide_read_only(policy, state, offered)
    check_command(command, state, offered)
    return command


def operation(command: AdaptationCommand) -> str:
    return lifecycle.command_name(command)


def feed(policy: Any, losses: Sequence[float], seeds: Sequence[SeedState]) -> list[AdaptationCommand]:
    return [decide(policy, packet(epoch, loss, seeds)) for epoch, loss in enumerate(losses, start=1)]


def test_it_waits_while_the_validation_loss_improves() -> None:
    commands = feed(stall(), FALLING, [slot("layers.0")])
    assert [operation(command) for command in commands] == ["noop"] * 3
    assert commands[-1].decision.rationale == "still improving (0 of 2 flat decision points)"
    assert commands[-1].decision.policy_name == "stall"


def test_a_stall_germinates_the_first_offered_blueprint_that_fits_the_first_free_slot() -> None:
    seeds = [
        slot("layers.0", lifecycle.EMBARGOED, embargo_epochs_remaining=1),  # not free yet
        slot("layers.1"),
        slot("layers.2"),
    ]
    commands = feed(stall(patience=2), (1.0, 0.995, 0.999), seeds)  # two decision points without a 1% drop
    assert [operation(command) for command in commands] == ["noop", "noop", "germinate"]
    germinate = commands[-1]
    assert germinate.target_slot_id == "layers.1"
    assert germinate.seed_operation.blueprint_id == "BP802"  # BP801 comes first but grows only in conv2d slots
    assert dict(germinate.seed_operation.parameters) == {"rank": 4.0, "alpha": 1.0}  # the defaults
    assert germinate.decision.rationale == "validation loss flat for 2 decision points: grow BP802"


def test_parameters_asked_for_are_rounded_and_clamped_into_the_blueprints_bounds() -> None:
    policy = stall(patience=1, parameters={"rank": 7.6, "alpha": 40.0, "not-a-parameter": 3.0})
    germinate = feed(policy, (1.0, 1.0), [slot("layers.0")])[-1]
    assert dict(germinate.seed_operation.parameters) == {"rank": 8.0, "alpha": 2.0}


def test_no_germination_while_a_seed_is_in_flight() -> None:
    seeds = [slot("layers.0", lifecycle.TRAINING, stage_epochs=0), slot("layers.1")]
    command = feed(stall(patience=1), (1.0, 1.0), seeds)[-1]
    assert operation(command) == "noop"
    assert command.decision.rationale == "stalled, but 1 seed(s) are in flight"


RAMP_DONE = {"alpha_steps": 30, "alpha_total_steps": 30}


@pytest.mark.parametrize(
    ("stage", "fields", "expected"),
    [
        (lifecycle.GERMINATED, {}, "start_training"),
        (lifecycle.TRAINING, {"stage_epochs": 0}, "noop"),  # not yet measured in TRAINING: Kasmina would refuse
        (lifecycle.TRAINING, {"stage_epochs": 1, "contribution": -0.5}, "start_grafting"),  # TRAINING is not judged
        (lifecycle.BLENDING, {"stage_epochs": 3, "alpha_steps": 10, "alpha_total_steps": 30}, "noop"),
        (lifecycle.BLENDING, {"stage_epochs": 3, **RAMP_DONE}, "stabilize"),
        (lifecycle.SHADOWING, {"stage_epochs": 1, "contribution": 0.0}, "evaluate"),
        (lifecycle.PROBATIONARY, {"stage_epochs": 0, "contribution": 0.02}, "noop"),
        (lifecycle.PROBATIONARY, {"stage_epochs": 1, "contribution": 0.02}, "fossilize"),
        (lifecycle.PROBATIONARY, {"stage_epochs": 1, "contribution": 0.0}, "cull"),  # probation over, no gain
        (lifecycle.BLENDING, {"stage_epochs": 1, "contribution": -0.01}, "cull"),  # it hurts
        (lifecycle.SHADOWING, {"stage_epochs": 0, "contribution": -0.0005}, "noop"),  # within cull_below: kept
        (lifecycle.FOSSILIZED, {"contribution": -0.5}, "noop"),  # permanent: never culled
    ],
    ids=[
        "germinated",
        "training-unmeasured",
        "training-measured",
        "blending-ramping",
        "blending-ramp-done",
        "shadowing",
        "probation-unmeasured",
        "probation-pays",
        "probation-does-not-pay",
        "blending-hurts",
        "shadowing-within-noise",
        "fossilized",
    ],
)
def test_each_seed_moves_as_soon_as_its_stage_allows(stage: int, fields: dict[str, Any], expected: str) -> None:
    command = feed(stall(), FALLING, [slot("layers.0", stage, **fields)])[-1]
    assert operation(command) == expected, command.decision.rationale
    if expected != "noop":
        assert command.target_slot_id == "layers.0"


def test_culls_come_first_then_the_latest_stage() -> None:
    ready_to_keep = slot("layers.1", lifecycle.PROBATIONARY, stage_epochs=1, contribution=0.02)
    young = slot("layers.2", lifecycle.GERMINATED)
    hurting = slot("layers.0", lifecycle.BLENDING, stage_epochs=2, contribution=-0.02)
    assert operation(decide(stall(), packet(1, 1.0, [ready_to_keep, young]))) == "fossilize"
    cull = decide(stall(), packet(1, 1.0, [ready_to_keep, young, hurting]))
    assert (operation(cull), cull.target_slot_id) == ("cull", "layers.0")
    assert cull.decision.rationale == "it hurts: contribution -0.02 < -0.001"


def test_a_resumed_policy_decides_exactly_as_the_uninterrupted_one() -> None:
    """The guide's rule for policy state: plain data through torch.save / torch.load(weights_only=True)."""
    losses = (1.0, 0.9, 0.899, 0.898, 0.85, 0.849, 0.848, 0.847)
    seeds = [slot("layers.0")]
    uninterrupted = stall(patience=3)
    expected = [c.SerializeToString(deterministic=True) for c in feed(uninterrupted, losses, seeds)]
    assert AdaptationCommand.FromString(expected[-1]).seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    for cut in range(1, len(losses)):
        first = stall(patience=3)
        feed(first, losses[:cut], seeds)
        buffer = io.BytesIO()
        torch.save({"policy": first.state_dict()}, buffer)
        buffer.seek(0)
        resumed = stall(patience=3)
        resumed.load_state_dict(torch.load(buffer, weights_only=True)["policy"])
        rest = [decide(resumed, packet(epoch, loss, seeds)) for epoch, loss in enumerate(losses, 1) if epoch > cut]
        assert [c.SerializeToString(deterministic=True) for c in rest] == expected[cut:], f"resumed after {cut}"


# -- options, as the guide prints their errors ----------------------------------------------------------------------
@pytest.fixture
def registry() -> Registry:
    registry = Registry.create(env={})
    registry.pm.register(STALL, name="stall-guide")
    registry.invalidate()
    return registry


def config_error(registry: Registry, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        registry.load_config(**kwargs)
    return str(caught.value)


def test_bad_options_are_reported_exactly_as_the_guide_prints_them(registry: Registry, tmp_path: Path) -> None:
    toml = tmp_path / "stall.toml"
    toml.write_text("[tamiyo.stall]\nmin_improvement = 1.5\n")
    messages = [
        config_error(registry, env={}, overrides=["tamiyo.stall.patience=0"]),
        config_error(registry, path=toml, env={}).replace(f"{tmp_path}/", ""),
        config_error(registry, env={}, overrides=["tamiyo.stall.cull_below=0.5"]),
        config_error(registry, env={}, overrides=["tamiyo.stall.patiense=3"]),
        config_error(registry, env={"ESPER_TAMIYO__STALL__PATIENCE": "0"}),
    ]
    printed = printed_errors()
    assert len(printed) == len(messages)
    for line, message in zip(printed, messages, strict=True):
        if line.endswith(" ..."):
            assert message.startswith(line.removesuffix(" ...")), message
        else:
            assert message == line


def printed_errors() -> list[str]:
    """The lines of the guide's block of configuration errors (a ``text`` block about ``tamiyo.stall``)."""
    blocks = re.findall(r"^```text\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if block.startswith("tamiyo.stall.")]
    assert len(found) == 1, "docs/plugins.md needs one text block of tamiyo.stall configuration errors"
    return str(found[0]).splitlines()


def test_options_come_from_the_environment_and_reach_the_factory(registry: Registry) -> None:
    environment = {"ESPER_TAMIYO__STALL__PATIENCE": "3", "ESPER_TAMIYO__STALL__PARAMETERS": "{scale = 0.5}"}
    config = registry.load_config(env=environment, overrides=["tamiyo.policy=stall"])
    policy = registry.build(registry.policy("stall"), config=config)
    assert (policy.options.patience, policy.options.parameters) == (3, {"scale": 0.5})
    assert registry.build(registry.policy("stall")).options == STALL.StallOptions()  # outside a run: the defaults


# -- the risk rules that keep a blueprint out -------------------------------------------------------------------------
class OneBlueprintCatalog:
    name = "acme"

    def __init__(self, descriptor: BlueprintDescriptor) -> None:
        self.descriptor = descriptor

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [self.descriptor]


def controller(registry: Registry, tmp_path: Path, descriptor: BlueprintDescriptor, *overrides: str) -> Any:
    # No budget for the decision's latency: a slow first decision on a busy machine must not hold the second back.
    fixed = ["tamiyo.policy=stall", "tamiyo.stall.patience=1", "tamiyo.decision_budget_ms=1e9"]
    config = registry.load_config(env={}, overrides=[*fixed, *overrides])
    return registry.build(
        registry.controller("tamiyo"),
        config=config,
        signing_key=SigningKey.generate(),
        run_dir=tmp_path,
        catalogs=[OneBlueprintCatalog(descriptor)],
    )


def stalled_decision(tamiyo: Any) -> AdaptationCommand:
    seeds = [slot("layers.0")]
    tamiyo.decide(packet(1, 1.0, seeds))
    command: AdaptationCommand = tamiyo.decide(packet(2, 1.0, seeds))
    return command


def test_a_blueprint_at_the_downgrade_risk_is_held_back_until_the_threshold_is_raised(
    registry: Registry, tmp_path: Path
) -> None:
    risky = BlueprintDescriptor(
        blueprint_id="BP777", tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.65, slot_kinds=[VECTOR], catalog="acme"
    )
    held = stalled_decision(controller(registry, tmp_path, risky))
    assert held.command_type == CommandType.COMMAND_NOOP and held.decision.risk_reason == "blueprint_risk"
    assert held.decision.rationale.startswith("held back germinate: blueprint_risk (BP777 declared risk 0.65); the")
    assert (held.decision.blueprint_risk_source, held.decision.blueprint_risk) == ("declared", 0.65)
    grown = stalled_decision(controller(registry, tmp_path, risky, "tamiyo.risk.blueprint_risk_downgrade=0.7"))
    assert operation(grown) == "germinate" and grown.decision.risk_reason == "policy"


def test_a_blueprint_of_a_tier_the_run_does_not_allow_is_never_offered(registry: Registry, tmp_path: Path) -> None:
    experimental = BlueprintDescriptor(
        blueprint_id="BP778", tier=BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL, risk=0.3, slot_kinds=[VECTOR]
    )
    unseen = stalled_decision(controller(registry, tmp_path, experimental))
    assert unseen.decision.rationale == "stalled, but no free slot fits an offered blueprint"
    allowed = controller(registry, tmp_path, experimental, 'urza.allowed_tiers=["SAFE", "EXPERIMENTAL"]')
    assert operation(stalled_decision(allowed)) == "germinate"


# -- the SlotShape example --------------------------------------------------------------------------------------------
def test_the_slot_shape_example_runs_and_prices_a_blueprint_with_its_own_catalog() -> None:
    shapes = guide_module("plugins_guide_slot_shapes", "# slot_shapes.py")  # its own asserts run here
    assert shapes.width(SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (8, 24))) == 24
    assert shapes.width(SlotShape(VECTOR, (32,))) == 32
    registry = Registry.create(env={})
    karn = registry.build(registry.blueprint_catalog("karn"))
    bp002 = next(d for d in karn.descriptors() if d.blueprint_id == "BP002")
    seed = slot("layers.0")
    expected = karn.parameter_count("BP002", SlotShape(VECTOR, (32,)), {"scale": 1.0})
    assert shapes.price([karn], bp002, seed, {"scale": 1.0}) == expected == 32 * 32 + 32
    assert shapes.price([], bp002, seed, {}) is None


# -- (c) a real run, and the guide's own test file --------------------------------------------------------------------
@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` holding the guide's stall_policy.py, stall.toml and test_stall_policy.py."""
    directory = tmp_path / "example"
    directory.mkdir()
    for name in ("stall_policy.py", "stall.toml", "test_stall_policy.py"):
        (directory / name).write_text(code_block(f"# {name}"))
    monkeypatch.delitem(sys.modules, "stall_policy", raising=False)
    monkeypatch.syspath_prepend(str(directory))
    yield directory
    sys.modules.pop("stall_policy", None)


@pytest.mark.slow
def test_a_real_run_selects_the_policy_by_name_and_grows_a_seed_to_its_end(example: Path) -> None:
    import stall_policy  # the guide's module, as the entry point `stall = "stall_policy"` would load it

    registry = Registry.create(env={})
    registry.pm.register(stall_policy, name="stall")
    registry.invalidate()
    overrides = [*BASE, f"run.runs_dir={example / 'runs'}", "nissa.report.automatic=false"]
    config = registry.load_config(example / "stall.toml", env={}, overrides=overrides)
    run = start_run(registry, config)
    trainer = Trainer(run)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    record = read_record(run.run_dir)
    decisions = [entry for entry in record if entry["kind"] == "decision"]
    assert decisions and {entry["policy"] for entry in decisions} == {"stall"}
    transitions = [entry for entry in record if entry["kind"] == "transition"]
    germinated = [entry for entry in transitions if entry["target"] == "GERMINATED"]
    assert germinated, "the validation loss of the synthetic task stalls within 16 epochs"
    first = germinated[0]
    assert first["blueprint"] in {descriptor.blueprint_id for descriptor in karn_offered()}
    ends = [e["target"] for e in transitions if e["seed"] == first["seed"] and e["target"] in {"FOSSILIZED", "CULLED"}]
    assert ends, f"the seed {first['seed']} neither reached FOSSILIZED nor was culled"
    assert summary.fossilized + summary.culled >= 1


@pytest.mark.slow
def test_the_guides_test_file_passes(example: Path) -> None:
    """``pytest test_stall_policy.py`` beside the guide's stall_policy.py, as a reader would run it."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_stall_policy.py"],
        cwd=example,
        env={**environment, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "3 passed" in completed.stdout
