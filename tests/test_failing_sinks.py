"""A telemetry sink can never stop training (issue #14's part 7, on the plugin-failure mechanism of #15): a sink that
raises is written down once like any plugin, its packets wait in a bounded queue and reach it in order once it works
again, and a sink that keeps failing is left alone by its breaker; the run finishes either way."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from esper_core import hookimpl
from esper_core.leyline import TelemetryPacket
from esper_core.plugins import Registry, TelemetrySinkSpec
from esper_core.testing.servers import wait_until
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.sinks import SinkChannel, SinkOptions
from esper_core.tolaria.trainer import Trainer

from tolaria_runs import BASE

pytestmark = pytest.mark.slow


class FlakySink:
    """Raises for its first ``failures`` emits, then keeps every packet."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.packets: list[TelemetryPacket] = []

    def emit(self, packet: TelemetryPacket) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("the collector is down")
        self.packets.append(packet)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


SINKS: dict[str, FlakySink] = {}


class SinkPlugin:
    @hookimpl
    def esper_nissa_telemetry_sinks(self) -> list[TelemetrySinkSpec]:
        return [
            TelemetrySinkSpec(name="flaky", factory=lambda context: SINKS["flaky"]),
            TelemetrySinkSpec(name="broken", factory=lambda context: SINKS["broken"]),
        ]


def run(tmp_path: Path, *settings: str) -> tuple[Trainer, list[tuple[str, str]]]:
    registry = Registry.create(env={})
    registry.pm.register(SinkPlugin(), name="sinks")
    registry.invalidate()
    overrides = [*BASE, "run.epochs=4", "nissa.report.automatic=false", f"run.runs_dir={tmp_path}", "run.name=sinks",
                 *settings]  # fmt: skip
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=overrides)))
    notices: list[tuple[str, str]] = []
    trainer.on_notice = lambda what, line: notices.append((what, line))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer, notices


def test_failing_sinks_never_stop_the_run_and_are_written_down_once(tmp_path: Path) -> None:
    SINKS["flaky"], SINKS["broken"] = FlakySink(failures=2), FlakySink(failures=10**9)
    trainer, notices = run(tmp_path, 'nissa.sinks=["flaky", "broken"]', "nissa.delivery.retry_after_s=3600")
    record = read_record(tmp_path / "sinks")
    assert record[-1]["kind"] == "run_finished", "the run finished"
    errors = [e for e in record if e["kind"] == "plugin_error"]
    assert {(e["plugin_kind"], e["plugin"]) for e in errors} == {
        ("telemetry sink", "flaky"),
        ("telemetry sink", "broken"),
    }
    assert all(e["error_type"] == "ConnectionError" for e in errors)
    lines = [line for what, line in notices if "telemetry sink" in line]
    assert len(lines) == 2 and all("ConnectionError" in line for line in lines), "one line per sink"
    flaky, broken = SINKS["flaky"], SINKS["broken"]
    # The flaky sink got every packet in the end, in order: its two failures only delayed the first ones.
    assert flaky.packets and flaky.calls == len(flaky.packets) + 2
    # The broken one was called until its breaker opened (3 failures), then left alone for the rest of the run.
    assert broken.calls == 3 and not broken.packets
    channel = next(c for c in trainer.recorder.channels() if c.name == "broken")
    assert channel.queue and channel.breaker.is_open


def test_a_queue_keeps_the_newest_packets_and_counts_what_it_dropped() -> None:
    sink = FlakySink(failures=10**9)
    failures: list[Any] = []
    options = SinkOptions(max_queued=3, failure_threshold=100)
    channel = SinkChannel(sink, "broken", options, lambda error, during: failures.append((error, during)))
    for number in range(5):
        channel.emit(TelemetryPacket(packet_id=str(number)))
    channel.settle()
    assert [p.packet_id for p in channel.queue] == ["2", "3", "4"] and channel.dropped == 2
    assert failures and all(during == "emit" for _, during in failures), "reported on the run's thread, at a settle"
    sink.failures = 0  # it works again: what is queued arrives, in order
    channel.flush()
    assert [p.packet_id for p in sink.packets] == ["2", "3", "4"] and not channel.queue
    channel.close()


class BlockingSink(FlakySink):
    """Blocks in ``emit`` until released (a collector that stopped answering)."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.release = threading.Event()

    def emit(self, packet: TelemetryPacket) -> None:
        self.release.wait()
        super().emit(packet)


def test_a_blocking_sink_costs_a_decision_point_at_most_the_wait_and_catches_up() -> None:
    sink = BlockingSink()
    failures: list[tuple[BaseException, str]] = []
    channel = SinkChannel(
        sink, "stuck", SinkOptions(wait_ms=50), lambda error, during: failures.append((error, during))
    )
    started = time.perf_counter()
    for number in range(3):
        channel.emit(TelemetryPacket(packet_id=str(number)))
        channel.flush()
    assert time.perf_counter() - started < 2.0, "three decision points waited about 50 ms each, not for the sink"
    assert [type(error).__name__ for error, _ in failures] == ["SinkBlockedError"], "reported once while it blocks"
    sink.release.set()  # it answers again: everything queued arrives, in order
    channel.flush()
    assert wait_until(lambda: len(sink.packets) == 3, what="the queue delivered")
    assert [p.packet_id for p in sink.packets] == ["0", "1", "2"]
    channel.close()


def test_a_resume_may_change_the_sinks_and_nothing_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esper_core.cli.main import main
    from esper_nissa.sinks import read_jsonl

    settings = [*BASE, "run.epochs=3", "nissa.report.automatic=false", 'nissa.sinks=["jsonl"]']
    settings += [f"run.runs_dir={tmp_path}", "run.name=r"]
    assert main(["run", "--quiet", *(item for s in settings for item in ("--set", s))]) == 0
    run_dir = tmp_path / "r"

    def points() -> list[tuple[str, int, str]]:
        rows = read_jsonl(run_dir / "telemetry.jsonl")
        return [(row["sourceSubsystem"], row.get("epoch", 0), row.get("globalStep", "0")) for row in rows]

    before = points()
    for checkpoint in sorted((run_dir / "checkpoints").glob("*.pt"))[1:]:
        checkpoint.unlink()  # as if killed in epoch 2: the resume trains epochs 2 and 3 again
    # Another list, the jsonl sink now second: it still finds its own state (by name) and writes nothing twice.
    assert main(["run", "--quiet", "--resume", str(run_dir), "--set", 'nissa.sinks=["prometheus", "jsonl"]']) == 0
    after = points()
    assert len(after) > len(before) - 2, "the resumed run emitted its last decision point's packets again"
    assert len(after) == len(set(after)), "and the jsonl sink cut its file back first: no packet twice"
    assert '"prometheus"' in (run_dir / "config.toml").read_text(), "the next resume keeps the new sinks"
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--set", "run.epochs=5"]) == 2
    assert "only the telemetry sinks (nissa.* keys) may change on --resume, not 'run.epochs'" in capsys.readouterr().err
