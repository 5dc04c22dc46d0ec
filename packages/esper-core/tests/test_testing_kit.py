"""The testing kit itself: its fixtures clean up, and its conformance suites pass good plugins and catch bad ones."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Mapping, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandSeedOperation,
    CommandType,
    GrowthMode,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TelemetryPacket,
)
from esper_core.protocols import SlotShape
from esper_core.testing.conformance import (
    BlueprintCatalogConformance,
    TamiyoPolicyConformance,
    TelemetrySinkConformance,
)
from esper_core.testing.conformance.catalog import check_blueprint, slots_for
from esper_core.testing.conformance.policy import check_command, decide_read_only
from esper_core.testing.processes import Child


def test_register_plugin_always_unregisters_even_when_the_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from esper_core.plugins import create_plugin_manager

        SHARED = create_plugin_manager(autoload=False, env={})

        @pytest.fixture
        def esper_plugin_manager():
            return SHARED

        class Plugin:
            pass

        def test_registers_then_fails(register_plugin):
            register_plugin(Plugin(), name="temporary")
            assert SHARED.has_plugin("temporary")
            raise RuntimeError("the test fails after registering")

        def test_the_plugin_is_gone():
            assert not SHARED.has_plugin("temporary")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)


# -- telemetry sinks -------------------------------------------------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.packets: list[TelemetryPacket] = []
        self.closed = False

    def emit(self, packet: TelemetryPacket) -> None:
        self.packets.append(packet)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class TestListSinkConforms(TelemetrySinkConformance):
    @pytest.fixture
    def sink(self) -> ListSink:
        return ListSink()


# -- policies --------------------------------------------------------------------------------------------------
BOUNDS = {"rank": BlueprintParameterBounds(min_value=1, max_value=8, default_value=4, integer=True)}
DESCRIPTOR = BlueprintDescriptor(
    blueprint_id="BP900",
    name="zero_linear",
    tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
    risk=0.1,
    allowed_parameters=BOUNDS,
    slot_kinds=[SlotKind.SLOT_KIND_VECTOR],
)


class GerminateFirstDormant:
    """A minimal policy that germinates the first free vector slot and otherwise waits."""

    name = "germinate-first"

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        for seed in state.seeds:
            if (
                seed.stage == SeedLifecycleStage.SEED_STAGE_DORMANT
                and seed.embargo_epochs_remaining == 0
                and seed.slot_kind == SlotKind.SLOT_KIND_VECTOR
                and blueprints
            ):
                return AdaptationCommand(
                    command_type=CommandType.COMMAND_SEED,
                    target_slot_id=seed.slot_id,
                    seed_operation=CommandSeedOperation(
                        operation=SeedOperation.SEED_OP_GERMINATE,
                        blueprint_id=blueprints[0].blueprint_id,
                        parameters={"rank": 2.0},
                    ),
                )
        return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)


class TestGerminatingPolicyConforms(TamiyoPolicyConformance):
    @pytest.fixture
    def policy(self) -> GerminateFirstDormant:
        return GerminateFirstDormant()

    @pytest.fixture
    def blueprints(self) -> list[BlueprintDescriptor]:
        return [DESCRIPTOR]


def _state(stage: SeedLifecycleStage.ValueType) -> SystemStatePacket:
    return SystemStatePacket(
        seeds=[SeedState(slot_id="s0", stage=stage, slot_kind=SlotKind.SLOT_KIND_VECTOR, slot_shape=[8])]
    )


def _germinate(slot: str = "s0", blueprint: str = "BP900", rank: float = 2.0) -> AdaptationCommand:
    return AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id=slot,
        seed_operation=CommandSeedOperation(
            operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id=blueprint, parameters={"rank": rank}
        ),
    )


@pytest.mark.parametrize(
    ("command", "stage", "complaint"),
    [
        (
            _germinate(),
            SeedLifecycleStage.SEED_STAGE_TRAINING,
            "GERMINATE on slot 's0', which is TRAINING: it needs DORMANT",
        ),
        (_germinate(slot="nowhere"), SeedLifecycleStage.SEED_STAGE_DORMANT, "unknown slot"),
        (_germinate(blueprint="BP404"), SeedLifecycleStage.SEED_STAGE_DORMANT, "not offered"),
        (_germinate(rank=99), SeedLifecycleStage.SEED_STAGE_DORMANT, "outside its bounds"),
        (
            AdaptationCommand(
                command_type=CommandType.COMMAND_SEED,
                target_slot_id="s0",
                seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_FOSSILIZE),
            ),
            SeedLifecycleStage.SEED_STAGE_TRAINING,
            "FOSSILIZE on slot 's0', which is TRAINING: it needs PROBATIONARY",
        ),
    ],
)
def test_the_policy_kit_catches_illegal_commands(
    command: AdaptationCommand, stage: SeedLifecycleStage.ValueType, complaint: str
) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_command(command, _state(stage), [DESCRIPTOR])


class SortsSlotsInPlace:
    """Ranks the slots by sorting the packet's own list: an innocent-looking change to the packet it was given."""

    name = "sorts-in-place"

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        state.seeds.sort(key=lambda seed: seed.slot_id, reverse=True)
        return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)


class LowersRisk:
    """'Rescues' every blueprint from the risk engine by lowering its risk in the offered descriptors."""

    name = "lowers-risk"

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        for descriptor in blueprints:
            descriptor.risk = 0.0
        return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)


def _offered() -> list[BlueprintDescriptor]:
    """A fresh copy of DESCRIPTOR, which a mutating policy may change without spoiling other tests."""
    copy = BlueprintDescriptor()
    copy.CopyFrom(DESCRIPTOR)
    return [copy]


def test_the_policy_kit_names_what_a_policy_changed_in_its_packet() -> None:
    state = SystemStatePacket(seeds=[SeedState(slot_id="a"), SeedState(slot_id="b")])
    with pytest.raises(
        AssertionError,
        match=r"policy 'sorts-in-place' changed the SystemStatePacket it was given "
        r"\(seeds\[0\]\.slot_id, seeds\[1\]\.slot_id\)\. The packet is read-only",
    ):
        decide_read_only(SortsSlotsInPlace(), state, _offered())


def test_the_policy_kit_names_what_a_policy_changed_in_a_descriptor() -> None:
    with pytest.raises(
        AssertionError, match=r"policy 'lowers-risk' changed the blueprint descriptors it was offered \(BP900: risk\)"
    ):
        decide_read_only(LowersRisk(), _state(SeedLifecycleStage.SEED_STAGE_DORMANT), _offered())


def test_a_policy_that_leaves_its_inputs_alone_passes_the_read_only_check() -> None:
    state = _state(SeedLifecycleStage.SEED_STAGE_DORMANT)
    command = decide_read_only(GerminateFirstDormant(), state, _offered())
    assert command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert state == _state(SeedLifecycleStage.SEED_STAGE_DORMANT)


@pytest.mark.slow  # a few seconds: Hypothesis shrinks and explains each of the two failures
def test_the_policy_suite_fails_a_policy_that_changes_its_inputs(pytester: pytest.Pytester) -> None:
    """The suite, subclassed as a plugin's tests subclass it, fails a policy that changes the packet or the offered
    descriptors, and says what changed."""
    pytester.makepyfile(
        """
        import pytest
        from esper_core.leyline import (
            AdaptationCommand, BlueprintDescriptor, BlueprintTier, CommandType, SlotKind,
        )
        from esper_core.testing.conformance import TamiyoPolicyConformance

        NOOP = AdaptationCommand(command_type=CommandType.COMMAND_NOOP)

        class KeepsNotesInThePacket:
            name = "keeps-notes"

            def decide(self, state, blueprints):
                state.extras["keeps-notes.seen"] = 1.0
                return NOOP

        class LowersRisk:
            name = "lowers-risk"

            def decide(self, state, blueprints):
                for descriptor in blueprints:
                    descriptor.risk = 0.0
                return NOOP

        class Suite(TamiyoPolicyConformance):
            @pytest.fixture
            def blueprints(self):
                return [BlueprintDescriptor(blueprint_id="BP900", tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.7,
                                            slot_kinds=[SlotKind.SLOT_KIND_VECTOR])]

        class TestKeepsNotes(Suite):
            @pytest.fixture
            def policy(self):
                return KeepsNotesInThePacket()

        class TestLowersRisk(Suite):
            @pytest.fixture
            def policy(self):
                return LowersRisk()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*policy 'keeps-notes' changed the SystemStatePacket it was given (extras). The packet is read-only*",
            "*policy 'lowers-risk' changed the blueprint descriptors it was offered (BP900: risk). They are read-only*",
        ],
        consecutive=False,
    )


# -- blueprint catalogs ----------------------------------------------------------------------------------------
class ZeroLinear(torch.nn.Module):
    def __init__(self, width: int, rank: int, init_scale: float = 0.0) -> None:
        super().__init__()
        self.down = torch.nn.Linear(width, rank, bias=False)
        self.up = torch.nn.Linear(rank, width, bias=False)
        torch.nn.init.constant_(self.up.weight, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # type: ignore[no-any-return]


class TinyCatalog:
    name = "tiny"

    def __init__(self, miscount: int = 0, init_scale: float = 0.0) -> None:
        self.miscount = miscount
        self.init_scale = init_scale

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [DESCRIPTOR]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> torch.nn.Module:
        if blueprint_id != "BP900":
            raise KeyError(blueprint_id)
        return ZeroLinear(slot.shape[-1], int(parameters["rank"]), self.init_scale)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return 2 * slot.shape[-1] * int(parameters["rank"]) + self.miscount


class TestTinyCatalogConforms(BlueprintCatalogConformance):
    @pytest.fixture
    def catalog(self) -> TinyCatalog:
        return TinyCatalog()


SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (16,))


def test_the_catalog_kit_catches_a_wrong_parameter_estimate() -> None:
    with pytest.raises(AssertionError, match="estimated 65 parameters, built 64"):
        check_blueprint(TinyCatalog(miscount=1), DESCRIPTOR, SLOT, {"rank": 2})


def test_the_catalog_kit_catches_a_blueprint_that_jolts_the_host() -> None:
    with pytest.raises(AssertionError, match="initial output RMS"):
        check_blueprint(TinyCatalog(init_scale=0.5), DESCRIPTOR, SLOT, {"rank": 2})


def test_exempt_properties_are_not_checked() -> None:
    check_blueprint(TinyCatalog(init_scale=0.5), DESCRIPTOR, SLOT, {"rank": 2}, exempt=frozenset({"near_zero"}))


# -- width blueprints -------------------------------------------------------------------------------------------
WIDTH_DESCRIPTOR = BlueprintDescriptor(
    blueprint_id="BP950",
    name="flat_width",
    tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
    risk=0.1,
    allowed_parameters=BOUNDS,
    slot_kinds=[SlotKind.SLOT_KIND_VECTOR],
    growth_mode=GrowthMode.GROWTH_MODE_WIDTH,  # reads any kind (read_kinds empty), writes vectors
)
WIDTH_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (6,), read_kind=SlotKind.SLOT_KIND_CONV2D, read_shape=(2, 3, 3))


class FlatWidth(torch.nn.Module):
    """New units reading a whole activation (flattened) and writing a vector; ``residual_shaped`` makes it return
    the read activation's shape instead, the mistake of a module written for residual slots."""

    def __init__(self, slot: SlotShape, rank: int, init_scale: float, residual_shaped: bool) -> None:
        super().__init__()
        read = math.prod(slot.read_shape)
        self.residual_shaped = residual_shaped
        self.down = torch.nn.Linear(read, rank, bias=False)
        self.up = torch.nn.Linear(rank, read if residual_shaped else slot.shape[0], bias=False)
        torch.nn.init.constant_(self.up.weight, init_scale)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        out = self.up(self.down(a.flatten(1)))
        return out.view(a.shape) if self.residual_shaped else out  # type: ignore[no-any-return]


class TinyWidthCatalog:
    name = "tiny-width"

    def __init__(self, init_scale: float = 0.0, residual_shaped: bool = False) -> None:
        self.init_scale = init_scale
        self.residual_shaped = residual_shaped

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [WIDTH_DESCRIPTOR]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> torch.nn.Module:
        if blueprint_id != "BP950":
            raise KeyError(blueprint_id)
        assert slot.is_width, "the suite gives a width blueprint width slots"
        return FlatWidth(slot, int(parameters["rank"]), self.init_scale, self.residual_shaped)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        rank = int(parameters["rank"])
        written = math.prod(slot.read_shape) if self.residual_shaped else slot.shape[0]
        return math.prod(slot.read_shape) * rank + rank * written


class TestTinyWidthCatalogConforms(BlueprintCatalogConformance):
    @pytest.fixture
    def catalog(self) -> TinyWidthCatalog:
        return TinyWidthCatalog()


SEQUENCE_WIDTH = BlueprintDescriptor(
    blueprint_id="BP951",
    name="token_width",
    growth_mode=GrowthMode.GROWTH_MODE_WIDTH,
    slot_kinds=[SlotKind.SLOT_KIND_SEQUENCE],
    read_kinds=[SlotKind.SLOT_KIND_SEQUENCE],
)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_the_catalog_kit_draws_width_slots_for_width_blueprints(data: st.DataObject) -> None:
    residual = data.draw(slots_for(DESCRIPTOR))
    assert not residual.is_width and residual.kind == SlotKind.SLOT_KIND_VECTOR
    anything = data.draw(slots_for(WIDTH_DESCRIPTOR))
    assert anything.is_width and anything.kind == SlotKind.SLOT_KIND_VECTOR
    assert len(anything.read_shape) == {1: 3, 2: 1, 3: 2}[anything.read_kind]  # conv2d, vector, sequence
    tokens = data.draw(slots_for(SEQUENCE_WIDTH))
    assert tokens.read_kind == tokens.kind == SlotKind.SLOT_KIND_SEQUENCE
    assert tokens.read_shape[0] == tokens.shape[0]  # one sequence length on both sides


def test_the_catalog_kit_feeds_a_width_seed_the_read_shape_and_wants_the_written_one() -> None:
    check_blueprint(TinyWidthCatalog(), WIDTH_DESCRIPTOR, WIDTH_SLOT, {"rank": 2})
    with pytest.raises(AssertionError, match=r"output shape \(3, 2, 3, 3\), not \(3, 6\)"):
        check_blueprint(TinyWidthCatalog(residual_shaped=True), WIDTH_DESCRIPTOR, WIDTH_SLOT, {"rank": 2})


def test_the_catalog_kit_wants_a_width_seed_to_start_at_exactly_zero() -> None:
    """An initial output a residual seed could have (RMS well under 1e-3 of the input's) is still a change to the
    host's function, which new units must not make."""
    with pytest.raises(AssertionError, match="must be exactly zero"):
        check_blueprint(TinyWidthCatalog(init_scale=1e-7), WIDTH_DESCRIPTOR, WIDTH_SLOT, {"rank": 2})
    check_blueprint(TinyCatalog(init_scale=1e-7), DESCRIPTOR, SLOT, {"rank": 2})  # fine for a residual seed


# --- child processes that say when they are ready --------------------------------------------------------------

_SAYS_READY = """
import sys
print("starting", flush=True)
print("ready", flush=True)
sys.stdin.read()  # hold until killed; the end of stdin means the test is gone
print("released", flush=True)
"""


def test_a_child_is_waited_for_until_its_marker_and_killed_there() -> None:
    with Child([sys.executable, "-c", _SAYS_READY]) as child:
        assert child.wait_for("ready") == ["starting"]
        assert child.process.poll() is None, "still holding: nothing ever writes to its stdin"
        assert child.kill() == -signal.SIGKILL
    assert child.lines == ["starting", "ready"]


def test_a_child_that_exits_before_its_marker_fails_the_wait_with_its_status() -> None:
    with Child([sys.executable, "-c", "print('partial', flush=True); raise SystemExit(4)"]) as child:
        with pytest.raises(AssertionError, match=r"waiting for 'ready'.*exited with status 4 after printing 1 line\b"):
            child.wait_for("ready")
        assert child.lines == ["partial"]
        assert child.kill() == 4


def test_a_stuck_child_fails_the_wait_at_the_deadline() -> None:
    stuck = pytest.raises(AssertionError, match=r"waiting for 'ready'.*printed nothing more within")
    with Child([sys.executable, "-c", "import sys; sys.stdin.read()"]) as child, stuck:
        child.wait_for("ready", deadline_s=0.5)
    assert child.process.returncode == -signal.SIGKILL, "leaving the block kills it"


def test_kill_collects_what_the_child_printed_after_the_last_wait() -> None:
    script = "import sys\nfor i in range(3): print(i, flush=True)\nsys.stdin.read()"
    with Child([sys.executable, "-c", script]) as child:
        assert child.next_line() == "0"
        assert child.next_line() == "1"
        assert child.next_line() == "2"
        child.kill()
        child.kill()  # twice is harmless
    assert child.lines == ["0", "1", "2"]
