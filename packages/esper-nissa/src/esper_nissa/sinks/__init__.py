"""Nissa's telemetry sinks."""

from esper_nissa.sinks.jsonl import JsonlError, JsonlSink, read_jsonl, read_packets

__all__ = ["JsonlError", "JsonlSink", "read_jsonl", "read_packets"]
