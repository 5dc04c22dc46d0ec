"""Serialize + parse time of Esper's hot messages, against a JSON round trip of the same content.

The hot messages are the ones built once per decision point: a ``SystemStatePacket`` carrying ten seed states, and
a signed ``AdaptationCommand`` with its decision metadata. The budget (ARCHITECTURE.md section 4) is well under
80 µs each. The baseline is what a dict-and-JSON implementation would pay for the same content in the same run.

Usage: python benchmarks/leyline_serialization.py [--repeats 7] [--number 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import google.protobuf
from google.protobuf import json_format
from google.protobuf.internal import api_implementation
from google.protobuf.message import Message

from esper_core.leyline import (
    AdaptationCommand,
    BlendSchedule,
    CommandSeedOperation,
    CommandType,
    DecisionMetadata,
    OptimizerFamily,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
)
from esper_core.signing import CommandSigner, SigningKey


def state_packet(seeds: int = 10) -> SystemStatePacket:
    stages = [
        SeedLifecycleStage.SEED_STAGE_DORMANT,
        SeedLifecycleStage.SEED_STAGE_TRAINING,
        SeedLifecycleStage.SEED_STAGE_BLENDING,
        SeedLifecycleStage.SEED_STAGE_FOSSILIZED,
    ]
    packet = SystemStatePacket(
        version=1,
        packet_id="run-7-epoch-12",
        training_run_id="run-7",
        source_subsystem="tolaria",
        current_epoch=12,
        global_step=5_628,
        metrics=TrainingMetrics(
            epoch=12,
            global_step=5_628,
            epochs_total=30,
            train_loss=0.3121,
            train_accuracy=0.887,
            val_loss=0.3456,
            val_accuracy=0.874,
            best_val_loss=0.3401,
            loss_delta=-0.0042,
            learning_rate=0.001,
            optimizer_family=OptimizerFamily.OPTIMIZER_FAMILY_ADAMW,
            gradient_norm=1.72,
            samples_per_second=5_012.0,
            epoch_duration_ms=11_970.0,
            parameter_count=26_426,
        ),
    )
    for index in range(seeds):
        stage = stages[index % len(stages)]
        seed = SeedState(
            slot_id=f"features.{index}",
            stage=stage,
            slot_kind=SlotKind.SLOT_KIND_CONV2D,
            slot_shape=[16, 14, 14],
            layer_depth=index,
            activation_rms=0.82,
            host_gradient_norm=0.013,
        )
        if stage != SeedLifecycleStage.SEED_STAGE_DORMANT:
            seed.seed_id = f"seed-{index}"
            seed.blueprint_id = "BP009"
            seed.blueprint_parameters["depth"] = 2.0
            seed.alpha = 0.5
            seed.alpha_steps = 10
            seed.alpha_total_steps = 20
            seed.blend_schedule = BlendSchedule.BLEND_SCHEDULE_TANH
            seed.gradient_norm = 0.21
            seed.learning_rate = 0.005
            seed.age_epochs = 4
            seed.stage_epochs = 2
            seed.parameter_count = 4_640
            seed.contribution = 0.0031
        packet.seeds.append(seed)
    packet.timestamp.GetCurrentTime()
    return packet


def signed_command() -> AdaptationCommand:
    command = AdaptationCommand(
        version=1,
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="features.3",
        execution_deadline_ms=250,
        issued_by="tamiyo",
        training_run_id="run-7",
        decision_epoch=12,
        decision_step=5_628,
        seed_operation=CommandSeedOperation(
            operation=SeedOperation.SEED_OP_GERMINATE,
            blueprint_id="BP009",
            parameters={"depth": 2.0},
            blend_schedule=BlendSchedule.BLEND_SCHEDULE_TANH,
            alpha_total_steps=20,
            learning_rate=0.005,
        ),
        decision=DecisionMetadata(
            policy_name="heuristic",
            policy_version="1",
            risk_reason="policy",
            risk_score=0.3,
            selected_slot_score=0.82,
            blueprint_score=0.64,
            rationale="validation loss plateaued for 3 epochs",
        ),
    )
    return CommandSigner(SigningKey.generate(), issuer="tamiyo").sign(command)


def per_call_us(function: Callable[[], Any], number: int, repeats: int) -> tuple[float, float]:
    """Median and best per-call time in microseconds over ``repeats`` runs of ``number`` calls."""
    samples = [t / number * 1e6 for t in timeit.repeat(function, number=number, repeat=repeats)]
    return statistics.median(samples), min(samples)


def measure(name: str, message: Message, number: int, repeats: int) -> dict[str, Any]:
    cls = type(message)
    content = json_format.MessageToDict(message)

    def protobuf_round_trip() -> None:
        cls.FromString(message.SerializeToString())

    def json_round_trip() -> None:
        json.loads(json.dumps(content))

    proto_median, proto_best = per_call_us(protobuf_round_trip, number, repeats)
    json_median, _ = per_call_us(json_round_trip, number, repeats)
    return {
        "message": name,
        "bytes": message.ByteSize(),
        "protobuf_us_median": round(proto_median, 2),
        "protobuf_us_best": round(proto_best, 2),
        "json_us_median": round(json_median, 2),
        "json_over_protobuf": round(json_median / proto_median, 2),
        "budget_us": 80.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=7, help="timing runs (the median is reported)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = [
        measure("SystemStatePacket (10 seeds)", state_packet(10), args.number, args.repeats),
        measure("AdaptationCommand (signed)", signed_command(), args.number, args.repeats),
    ]
    print(
        f"protobuf {google.protobuf.__version__} ({api_implementation.Type()} backend), "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print(f"{'message':32} {'bytes':>6} {'µs median':>10} {'µs best':>8} {'JSON µs':>8} {'JSON/proto':>10}")
    for row in results:
        print(
            f"{row['message']:32} {row['bytes']:>6} {row['protobuf_us_median']:>10} {row['protobuf_us_best']:>8} "
            f"{row['json_us_median']:>8} {row['json_over_protobuf']:>10}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
