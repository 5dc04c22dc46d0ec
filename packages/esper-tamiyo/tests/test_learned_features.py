"""The feature encoding is documented, versioned, bounded, and the same in every process whatever the order in
which maps were filled or blueprints were offered."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from esper_core.leyline import (
    BlueprintDescriptor,
    BlueprintParameterBounds,
    HardwareContext,
    SeedLifecycleStage,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
)
from esper_core.testing.strategies import state_packets
from esper_tamiyo.learned import (
    FEATURE_SCHEMA,
    FEATURE_SCHEMA_VERSION,
    FeatureEncoder,
    LearnedPolicyOptions,
    blueprint_index,
    network,
    options,
    schema_digest,
    updates,
)
from esper_tamiyo.learned import encoder as encoder_module
from esper_tamiyo.learned.actions import GERMINATE, NUM_OPERATIONS, WIDTH_CLASSES
from esper_tamiyo.learned.policy import intra_op_threads
from esper_tamiyo.learned.schema import (
    BLUEPRINT_DIM,
    BLUEPRINT_FEATURES,
    DEFAULT_BLUEPRINT_VOCABULARY,
    GLOBAL_DIM,
    GLOBAL_FEATURES,
    PAIR_DIM,
    SLOT_DIM,
    SLOT_FEATURES,
    WIDTH_DIM,
)
from esper_tamiyo.options import HeuristicOptions

from tamiyo_scenarios import CountingCatalog

DOC = Path(__file__).resolve().parents[3] / "docs" / "learned-policy.md"
GROUPS = ("global", "slot", "blueprint", "pair", "width")

# The fixed decision point, as source, so that a child process builds exactly the same messages.
BUILD = r"""
from esper_core.leyline import (BlueprintDescriptor, BlueprintParameterBounds, SeedState, SystemStatePacket,
                                TrainingMetrics)

def build(reverse=False):
    order = (lambda items: list(reversed(items))) if reverse else list
    descriptors = []
    for i, kinds in enumerate([[1, 2], [3], [], [2], [1]]):
        d = BlueprintDescriptor(blueprint_id=f"BP{i:03d}", tier=1 + i % 3, risk=i / 10, stage=i, slot_kinds=kinds)
        for name, low, high, default in order([("width", 1, 64, 8), ("depth", 1, 4, 2), ("dropout", 0, 0.5, 0.1)]):
            d.allowed_parameters[name].CopyFrom(
                BlueprintParameterBounds(min_value=low, max_value=high, default_value=default))
        descriptors.append(d)
    seeds = []
    for i, stage in enumerate([1, 1, 2, 3, 4, 5, 6, 7, 9]):
        s = SeedState(slot_id=f"layer{i}", stage=stage, slot_kind=1 + i % 3,
                      slot_shape=[[16, 8, 8], [64], [10, 32]][i % 3], layer_depth=i, activation_rms=0.5 + i,
                      host_gradient_norm=0.1 * i)
        if stage not in (1, 9):
            s.seed_id, s.blueprint_id, s.parameter_count, s.age_epochs = f"s{i}", f"BP{i % 5:03d}", 100 * i, i
            s.contribution, s.seed_loss_delta, s.gradient_norm = 0.01 * i, -0.02, 1.5
        if stage == 9:
            s.embargo_epochs_remaining = 3
        for key, value in order([("a", 1.0), ("b", 2.0), ("c", 3.0)]):
            s.extras[key] = value
            s.blueprint_parameters[key] = value
        seeds.append(s)
    metrics = TrainingMetrics(epoch=7, global_step=700, epochs_total=30, train_loss=0.4, val_loss=0.55,
                              val_accuracy=0.81, best_val_loss=0.5, loss_delta=-0.01, learning_rate=3e-4,
                              gradient_norm=2.0, optimizer_family=3, parameter_count=120_000)
    state = SystemStatePacket(version=1, training_run_id="run", current_epoch=7, global_step=700, metrics=metrics,
                              seeds=seeds)
    for key, value in order([("x", 1.0), ("y", 2.0)]):
        state.extras[key] = value
    return state, order(descriptors)
"""

REPORT = r"""
import hashlib, json
from esper_tamiyo.learned import LearnedPolicy, blueprint_index

def report():
    state, descriptors = build()
    policy = LearnedPolicy()
    encoded = policy.encode(state, descriptors)
    weights = hashlib.sha256()
    for name, tensor in sorted(policy.network.state_dict().items()):
        weights.update(name.encode()); weights.update(tensor.numpy().tobytes())
    command = policy.decide(state, descriptors)
    return {
        "schema": policy.feature_schema_digest,
        "architecture": policy.architecture_digest,
        "encoding": encoded.digest(),
        "indices": [blueprint_index(f"BP{i:03d}") for i in range(5)],
        "weights": weights.hexdigest(),
        "action": command.decision.action_index,
        "log_prob": round(command.decision.action_log_prob, 9),
    }
"""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with intra_op_threads(1):
        yield


def namespace() -> dict[str, object]:
    scope: dict[str, object] = {}
    exec(BUILD + REPORT, scope)
    return scope


def test_the_schema_is_versioned_and_its_digest_is_the_sha256_of_its_canonical_json() -> None:
    assert FEATURE_SCHEMA["version"] == FEATURE_SCHEMA_VERSION == 3
    text = json.dumps(FEATURE_SCHEMA, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert schema_digest() == hashlib.sha256(text.encode()).hexdigest()
    assert schema_digest(512) != schema_digest()  # the vocabulary is part of the encoding
    assert len(FEATURE_SCHEMA["global"]) == GLOBAL_DIM
    assert len(FEATURE_SCHEMA["slot"]) == SLOT_DIM
    assert len(FEATURE_SCHEMA["blueprint"]) == BLUEPRINT_DIM
    assert len(FEATURE_SCHEMA["pair"]) == PAIR_DIM
    assert len(FEATURE_SCHEMA["width"]) == WIDTH_DIM
    assert FEATURE_SCHEMA["width_classes"] == list(WIDTH_CLASSES)
    names = [feature["name"] for group in GROUPS for feature in FEATURE_SCHEMA[group]]
    assert all(names.count(name) <= 3 for name in names)
    for group in GROUPS:
        group_names = [feature["name"] for feature in FEATURE_SCHEMA[group]]
        assert len(group_names) == len(set(group_names)), group


def test_the_schema_digest_is_pinned() -> None:
    """Every ``PolicyUpdate`` carries this digest and is refused when it differs: a change here orphans every trained
    policy. If the change is intended, bump ``FEATURE_SCHEMA_VERSION``, update docs/learned-policy.md and these values.
    """
    assert schema_digest() == "978520ec7d782ac19791db70c3de704db4ba8925cf4feddc6b4256d7bbdc96bf"
    assert schema_digest(512) == "8dfcb27ce3470b86a709b294563e68088042181a903b6a03973ef92b1c4230cb"


def test_every_feature_its_scaling_and_the_version_are_documented() -> None:
    doc = DOC.read_text()
    assert f"## Feature schema, version {FEATURE_SCHEMA_VERSION}" in doc
    assert schema_digest() in doc
    for group in GROUPS:
        assert f"### {group.capitalize()} features ({len(FEATURE_SCHEMA[group])})" in doc
        for index, feature in enumerate(FEATURE_SCHEMA[group]):
            source, scaling = (feature[key].replace("|", "\\|") for key in ("source", "scaling"))
            row = f"| {index} | `{feature['name']}` | {source} | {scaling} |"
            assert row in doc, f"docs/learned-policy.md: the {group} table needs the row {row}"


def test_option_defaults_match_the_modules_they_configure() -> None:
    assert options.DEFAULT_BLUEPRINT_VOCABULARY == DEFAULT_BLUEPRINT_VOCABULARY
    assert options.DEFAULT_NOOP_BIAS == network.DEFAULT_NOOP_BIAS
    assert options.DEFAULT_MAX_PAYLOAD_BYTES == updates.DEFAULT_MAX_PAYLOAD_BYTES
    # The budget: the encoder's defaults, and the heuristic's, so that the two policies compare at equal budgets.
    learned, heuristic = LearnedPolicyOptions(), HeuristicOptions()
    assert (
        learned.max_added_parameter_fraction
        == heuristic.max_added_parameter_fraction
        == encoder_module.DEFAULT_MAX_ADDED_PARAMETER_FRACTION
    )
    assert (
        learned.max_seed_parameter_fraction
        == heuristic.max_seed_parameter_fraction
        == encoder_module.DEFAULT_MAX_SEED_PARAMETER_FRACTION
    )


def test_the_width_classes_are_the_widths_kasmina_predicts_for() -> None:
    """Each width class reads Kasmina's prediction for exactly its width; Tamiyo may not import Kasmina, so its
    list is written out, and this checks the two did not drift apart."""
    growth_statistics = pytest.importorskip("esper_kasmina.growth_statistics")
    assert tuple(growth_statistics.CANDIDATE_WIDTHS) == WIDTH_CLASSES


def test_importing_the_options_does_not_import_torch() -> None:
    code = "import sys, esper_tamiyo.learned; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_schema_and_the_action_space_do_not_import_torch() -> None:
    """A tool that checks a field report's ``feature_schema_digest`` or decodes an ``action_index`` needs no torch."""
    code = (
        "import sys; from esper_tamiyo.learned import schema, actions; "
        "print(schema.schema_digest(), actions.PolicyAction.from_index(0), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[0] == schema_digest()
    assert result.stdout.strip().endswith("False")


def test_blueprint_indices_are_sha256_based_and_stable() -> None:
    expected = 1 + int.from_bytes(hashlib.sha256(b"esper.blueprint:BP001").digest()[:8], "big") % 1023
    assert blueprint_index("BP001") == expected
    assert blueprint_index("") == 0
    assert all(1 <= blueprint_index(f"BP{i}", 16) < 16 for i in range(200))


def test_the_encoding_is_the_same_in_another_process_with_another_hash_seed() -> None:
    here = namespace()
    expected = here["report"]()  # type: ignore[operator]
    script = BUILD + REPORT + "\nprint(json.dumps(report()))\n"
    env = {**os.environ, "PYTHONHASHSEED": "12345" if os.environ.get("PYTHONHASHSEED") != "12345" else "54321"}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(child.stdout.strip().splitlines()[-1]) == expected


def test_the_encoding_does_not_depend_on_map_or_offer_order() -> None:
    scope = namespace()
    state, descriptors = scope["build"]()  # type: ignore[operator]
    reversed_state, reversed_descriptors = scope["build"](reverse=True)  # type: ignore[operator]
    assert [d.blueprint_id for d in descriptors] != [d.blueprint_id for d in reversed_descriptors]
    encoder = FeatureEncoder()
    first, second = encoder.encode(state, descriptors), encoder.encode(reversed_state, reversed_descriptors)
    assert first.digest() == second.digest()
    assert first.blueprint_ids == tuple(sorted(first.blueprint_ids))
    # Duplicated ids keep one descriptor, chosen by content, not by position.
    duplicate = BlueprintDescriptor()
    duplicate.CopyFrom(descriptors[0])
    duplicate.risk = 0.99
    a = encoder.encode(state, [*descriptors, duplicate])
    b = encoder.encode(state, [duplicate, *descriptors])
    assert a.digest() == b.digest() and len(a.blueprints) == len(descriptors)


def test_values_are_scaled_into_sane_ranges_with_presence_flags() -> None:
    scope = namespace()
    state, descriptors = scope["build"]()  # type: ignore[operator]
    encoded = FeatureEncoder().encode(state, descriptors)
    g = dict(zip([f.name for f in GLOBAL_FEATURES], encoded.global_features.tolist(), strict=True))
    assert g["progress"] == pytest.approx(7 / 30) and g["progress.present"] == 1.0
    assert g["val_loss"] == pytest.approx(math.log1p(0.55)) and g["val_loss.present"] == 1.0
    assert g["loss_volatility"] == 0.0 and g["loss_volatility.present"] == 0.0  # absent, not zero
    assert g["learning_rate"] == pytest.approx((math.log10(3e-4) + 3) / 2)
    assert g["optimizer.ADAMW"] == 1.0 and g["optimizer.ADAM"] == 0.0
    assert g["stage_fraction.DORMANT"] == pytest.approx(2 / 9)
    assert g["nonfinite_inputs"] == 0.0
    slots = encoded.slot_features
    assert slots.shape == (9, SLOT_DIM) and encoded.blueprint_features.shape == (5, BLUEPRINT_DIM)
    names = [f.name for f in SLOT_FEATURES]
    row = dict(zip(names, slots[8].tolist(), strict=True))
    assert row["stage.EMBARGOED"] == 1.0 and row["embargoed"] == 1.0 and row["can_germinate"] == 0.0
    assert row["contribution.present"] == 0.0
    row = dict(zip(names, slots[3].tolist(), strict=True))
    assert row["contribution"] == pytest.approx(math.log1p(0.3)) and row["contribution.present"] == 1.0
    assert row["depth"] == pytest.approx(3 / 8)
    for tensor in (encoded.global_features, encoded.slot_features, encoded.blueprint_features):
        assert bool(torch.isfinite(tensor).all()) and float(tensor.abs().max()) <= 10.0


def test_non_finite_inputs_are_bounded_and_counted() -> None:
    metrics = TrainingMetrics(epoch=1, val_loss=math.nan, train_loss=math.inf, loss_delta=-math.inf)
    seed = SeedState(slot_id="a", stage=SeedLifecycleStage.SEED_STAGE_TRAINING, slot_kind=SlotKind.SLOT_KIND_VECTOR,
                     slot_shape=[8], alpha=math.nan, gradient_norm=math.inf)  # fmt: skip
    state = SystemStatePacket(metrics=metrics, seeds=[seed], hardware=HardwareContext(total_memory_gb=math.inf))
    blueprint = BlueprintDescriptor(blueprint_id="BP1", risk=math.nan)
    encoded = FeatureEncoder().encode(state, [blueprint])
    g = dict(zip([f.name for f in GLOBAL_FEATURES], encoded.global_features.tolist(), strict=True))
    assert g["val_loss.present"] == 0.0  # NaN is absent
    assert g["train_loss"] == 10.0 and g["loss_delta"] == -10.0  # infinities clipped
    assert g["nonfinite_inputs"] == pytest.approx(math.log1p(7))
    for tensor in (encoded.global_features, encoded.slot_features, encoded.blueprint_features):
        assert bool(torch.isfinite(tensor).all())


@settings(max_examples=40, deadline=None)
@given(state=state_packets(max_slots=10, blueprint_ids=["BP000", "BP001"]))
def test_any_packet_encodes_to_finite_bounded_tensors_with_consistent_masks(state: SystemStatePacket) -> None:
    scope = namespace()
    _, descriptors = scope["build"]()  # type: ignore[operator]
    encoded = FeatureEncoder().encode(state, descriptors)
    count = len(state.seeds)
    assert encoded.slot_features.shape == (count, SLOT_DIM)
    assert encoded.slot_mask.shape == (NUM_OPERATIONS, count)
    assert encoded.fit_mask.shape == (count, len(descriptors))
    for tensor in (encoded.global_features, encoded.slot_features, encoded.blueprint_features):
        assert bool(torch.isfinite(tensor).all()) and float(tensor.abs().max()) <= 10.0
    can_germinate = encoded.slot_features[:, [f.name for f in SLOT_FEATURES].index("can_germinate")]
    assert can_germinate.bool().tolist() == encoded.slot_mask[GERMINATE].tolist()


def test_the_options_read_from_a_configuration() -> None:
    from esper_core.config import load_config
    from esper_core.errors import ConfigError

    text = '[tamiyo.learned]\nhidden_size = 32\ndecoding = "sample"\ninitial_update = "u.bin"\n'
    config = load_config(sections=[LearnedPolicyOptions], text=text, env={})
    loaded = config.get(LearnedPolicyOptions)
    assert (loaded.hidden_size, loaded.decoding, loaded.initial_update) == (32, "sample", Path("u.bin"))
    with pytest.raises(ConfigError, match="decoding"):
        load_config(sections=[LearnedPolicyOptions], text='[tamiyo.learned]\ndecoding = "beam"\n', env={})
    with pytest.raises(ConfigError, match="hidden_size"):
        load_config(sections=[LearnedPolicyOptions], text="[tamiyo.learned]\nhidden_size = 2\n", env={})
    text = "[tamiyo.learned]\nmax_added_parameter_fraction = 0.25\nmax_seed_parameter_fraction = 0.1\n"
    loaded = load_config(sections=[LearnedPolicyOptions], text=text, env={}).get(LearnedPolicyOptions)
    assert (loaded.max_added_parameter_fraction, loaded.max_seed_parameter_fraction) == (0.25, 0.1)
    for key, value, why in (
        ("max_added_parameter_fraction", "-0.1", "cannot be negative"),
        ("max_added_parameter_fraction", "nan", "cannot be negative"),
        ("max_added_parameter_fraction", "inf", "must be a finite number"),
        ("max_seed_parameter_fraction", "0", "must be positive"),
        ("max_seed_parameter_fraction", "inf", "must be a finite number"),
    ):
        with pytest.raises(ConfigError, match=f"{key}.*{why}"):
            load_config(sections=[LearnedPolicyOptions], text=f"[tamiyo.learned]\n{key} = {value}\n", env={})


def test_width_slots_predictions_and_the_budget_are_encoded() -> None:
    """Schema 2: what Kasmina measures at width slots, and the parameter budget with each germination's cost."""
    dormant = SeedLifecycleStage.SEED_STAGE_DORMANT
    conv = SlotKind.SLOT_KIND_CONV2D
    decreases = [0.01, 0.02, 0.04, 0.08, 0.1, 0.12, 0.13]
    width_slot = SeedState(
        slot_id="w", stage=dormant, slot_kind=conv, slot_shape=[16, 8, 8], read_kind=conv, read_shape=[8, 8, 8],
        candidate_widths=list(WIDTH_CLASSES), predicted_loss_decrease=decreases,
    )  # fmt: skip
    # Another producer's list: widths 2 and 8 only, the second not measured (NaN).
    residual = SeedState(
        slot_id="r", stage=dormant, slot_kind=conv, slot_shape=[16, 8, 8], candidate_widths=[2, 8],
        predicted_loss_decrease=[0.1, math.nan],
    )  # fmt: skip
    busy = SeedState(
        slot_id="b", stage=SeedLifecycleStage.SEED_STAGE_TRAINING, slot_kind=conv, slot_shape=[16, 8, 8],
        seed_id="b#1", blueprint_id="BP101", parameter_count=2_000,
    )  # fmt: skip
    # The model holds 22 000 parameters, 2 000 of them in a seed: host 20 000, budget 10 000, 8 000 left.
    state = SystemStatePacket(metrics=TrainingMetrics(parameter_count=22_000), seeds=[width_slot, residual, busy])
    blueprint = BlueprintDescriptor(blueprint_id="BP101", slot_kinds=[conv])
    blueprint.allowed_parameters["width"].CopyFrom(
        BlueprintParameterBounds(min_value=1, max_value=256, default_value=4, integer=True)
    )
    encoder = FeatureEncoder(catalogs=[CountingCatalog([blueprint])])  # 160 parameters per unit of width here
    encoded = encoder.encode(state, [blueprint])
    g = dict(zip([f.name for f in GLOBAL_FEATURES], encoded.global_features.tolist(), strict=True))
    assert g["parameter_budget"] == pytest.approx(0.5)
    assert g["budget_left_fraction"] == pytest.approx(0.8) and g["budget_left_fraction.present"] == 1.0
    assert g["added_parameter_fraction"] == pytest.approx(0.1)
    assert g["nonfinite_inputs"] == pytest.approx(math.log1p(1))  # the NaN prediction
    names = [f.name for f in SLOT_FEATURES]
    w, r, b = (dict(zip(names, row, strict=True)) for row in encoded.slot_features.tolist())
    assert (w["width_slot"], w["read_kind.CONV2D"], r["width_slot"], r["read_kind.CONV2D"]) == (1.0, 1.0, 0.0, 0.0)
    for width, decrease in zip(WIDTH_CLASSES, decreases, strict=True):
        assert w[f"predicted_decrease.{width}"] == pytest.approx(math.log1p(decrease * 10))
        assert w[f"predicted_decrease.{width}.present"] == 1.0
    assert r["predicted_decrease.1.present"] == 0.0  # nothing measured at or below 1
    assert r["predicted_decrease.4"] == pytest.approx(math.log1p(1.0)) and r["predicted_decrease.4.present"] == 1.0
    assert r["predicted_decrease.16.present"] == 0.0  # its largest candidate below is 8, which is NaN
    assert b["predicted_decrease.64.present"] == 0.0
    # The residual blueprint fits the residual slot only; there, widths 1..32 cost at most 5 120 of the 8 000 left.
    assert encoded.fit_mask.tolist() == [[False], [True], [False]]
    assert encoded.width_mask[1, 0].tolist() == [True] * 6 + [False]
    assert encoded.width_values[1, 0].tolist() == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 0.0]
    expected = [160 * width / 8_000 for width in WIDTH_CLASSES[:6]] + [0.0]
    assert encoded.width_features[1, 0, :, 0].tolist() == pytest.approx(expected)
    assert r["cheapest_germination"] == pytest.approx(160 / 8_000) and r["cheapest_germination.present"] == 1.0
    assert w["cheapest_germination.present"] == 0.0 and w["can_germinate"] == 0.0  # no width blueprint offered
    assert (
        dict(zip([f.name for f in BLUEPRINT_FEATURES], encoded.blueprint_features[0].tolist(), strict=True))[
            "width_factor"
        ]
        == 1.0
    )
    for tensor in (encoded.global_features, encoded.slot_features, encoded.width_features):
        assert bool(torch.isfinite(tensor).all()) and float(tensor.abs().max()) <= 10.0
