"""The ``jsonl`` sink: conformance, one whole JSON line per packet, torn tails skipped and repaired, and the
factory's path rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from esper_core.errors import ConfigError
from esper_core.leyline import TelemetryPacket
from esper_core.plugins import Registry
from esper_core.protocols import ResumableSink, TelemetrySink
from esper_core.telemetry import Event, build_telemetry_packet
from esper_core.testing.conformance import TelemetrySinkConformance
from esper_nissa.sinks import JsonlError, JsonlSink, read_jsonl, read_packets


class TestJsonlSinkConformance(TelemetrySinkConformance):
    @pytest.fixture
    def sink(self, tmp_path: Path) -> TelemetrySink:
        return JsonlSink(tmp_path / "telemetry.jsonl")


def packets(count: int) -> list[TelemetryPacket]:
    return [
        build_telemetry_packet(
            source="tolaria",
            metrics=[("val_loss", 1.0 / (i + 1)), ("val_accuracy", 0.5, "fraction")],
            events=[Event("seed_germinated", f"slot s{i}", attributes={"slot": f"s{i}"})],
            training_run_id="run-1",
            epoch=i + 1,
            global_step=100 * (i + 1),
        )
        for i in range(count)
    ]


@pytest.fixture
def registry() -> Registry:
    return Registry.create(env={})


def test_every_packet_round_trips_as_one_line(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    sent = packets(3)
    with JsonlSink(path) as sink:
        for packet in sent:
            sink.emit(packet)
        sink.flush()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [json.loads(line) for line in lines[:-1]] == [MessageToDict(p) for p in sent]
    assert read_jsonl(path) == [MessageToDict(p) for p in sent]
    assert read_packets(path) == sent


def test_a_torn_last_line_is_skipped_and_cut_off_when_the_sink_reopens(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    sent = packets(3)
    with JsonlSink(path) as sink:
        for packet in sent[:2]:
            sink.emit(packet)
    whole = path.read_bytes()
    torn = json.dumps(MessageToDict(sent[2])).encode()[:25]  # a crash in the middle of the third line
    path.write_bytes(whole + torn)
    assert read_packets(path) == sent[:2]

    with JsonlSink(path) as sink:  # a resumed run appends to the same file
        assert sink.repaired_bytes == len(torn)
        sink.emit(sent[2])
    assert read_packets(path) == sent
    assert path.read_bytes() == whole + json.dumps(MessageToDict(sent[2]), separators=(",", ":")).encode() + b"\n"


def test_a_file_torn_inside_its_only_line_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    path.write_bytes(b'{"packetId":"a","sour')
    assert read_jsonl(path) == []
    with JsonlSink(path) as sink:
        assert sink.repaired_bytes == len(b'{"packetId":"a","sour')
    assert path.read_bytes() == b""


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    path.write_bytes(b'{"packetId":"a"}\n{"packetI\n{"packetId":"c"}\n')
    with pytest.raises(JsonlError, match=r"telemetry\.jsonl, line 2"):
        read_jsonl(path)


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    sent = packets(4)
    for packet in sent:
        with JsonlSink(path, fsync=False) as sink:
            sink.emit(packet)
    assert read_packets(path) == sent


def test_resuming_from_a_checkpoint_forgets_what_was_written_after_it(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    sent = packets(5)
    with JsonlSink(path) as sink:
        assert isinstance(sink, ResumableSink)
        for packet in sent[:2]:
            sink.emit(packet)
        checkpoint = sink.state_dict()
        for packet in sent[2:4]:
            sink.emit(packet)  # written, then the run is killed before its next checkpoint
    with JsonlSink(path) as resumed:  # the resumed run reopens the file and goes back to the checkpoint
        resumed.load_state_dict(checkpoint)
        resumed.emit(sent[4])
    assert read_packets(path) == [*sent[:2], sent[4]]


def test_a_checkpoint_beyond_the_end_of_the_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(packets(1)[0])
        sink.load_state_dict({"bytes": 10**9})
    assert len(read_packets(path)) == 1


def test_close_is_idempotent_and_emit_after_close_is_refused(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "telemetry.jsonl")
    sink.close()
    sink.close()
    sink.flush()
    assert sink.closed
    with pytest.raises(ValueError, match="closed"):
        sink.emit(packets(1)[0])


def test_the_registry_builds_it_into_the_run_directory(registry: Registry, tmp_path: Path) -> None:
    spec = registry.telemetry_sink("jsonl")
    sink = registry.build(spec, config=registry.load_config(env={}), run_dir=tmp_path)
    assert isinstance(sink, JsonlSink) and sink.path == tmp_path / "telemetry.jsonl"
    sink.emit(packets(1)[0])
    sink.close()
    assert len(read_jsonl(tmp_path / "telemetry.jsonl")) == 1


def test_the_path_is_configurable_relative_to_the_run_directory(registry: Registry, tmp_path: Path) -> None:
    config = registry.load_config(env={}, overrides=["nissa.jsonl.path=telemetry/packets.jsonl"])
    sink = registry.build(registry.telemetry_sink("jsonl"), config=config, run_dir=tmp_path)
    sink.close()
    assert sink.path == tmp_path / "telemetry" / "packets.jsonl" and sink.path.exists()


def test_without_a_run_directory_only_an_absolute_path_will_do(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no run directory.*absolute path"):
        registry.build(registry.telemetry_sink("jsonl"), config=registry.load_config(env={}))
    absolute = tmp_path / "elsewhere.jsonl"
    config = registry.load_config(env={}, overrides=[f"nissa.jsonl.path={absolute}"])
    sink = registry.build(registry.telemetry_sink("jsonl"), config=config)
    sink.close()
    assert sink.path == absolute and absolute.exists()


def test_an_empty_path_is_a_configuration_error_naming_the_key(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="path"):
        registry.load_config(env={}, overrides=["nissa.jsonl.path="])
