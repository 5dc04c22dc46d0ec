#!/usr/bin/env python3
"""Generate the Leyline field reference (``docs/reference/leyline.md``) from the comments in ``contracts/``.

The ``.proto`` comments are the documentation: a plugin author reads what a field means, its unit, when it is set,
who fills it and what a consumer may rely on in one place, and the same text reaches the ``.pyi`` stubs. This script
has protoc (the pinned ``grpc_tools``) parse the contracts into a ``FileDescriptorSet`` with ``--include_source_info``
and reads each comment from its ``SourceCodeInfo`` location, so the reference follows the compiler's reading of the
files (never a regex's). The output is deterministic and committed; ``--check`` regenerates it in memory and fails
on any difference (``make contracts`` and a test run it).

Every field and enum value reachable from the plugin-facing messages (:data:`DOCUMENTED_ROOTS`) must carry a
comment: a new field without one is an error naming it, so the reference never silently grows a blank row.

Usage::

    python scripts/generate_field_reference.py          # write docs/reference/leyline.md
    python scripts/generate_field_reference.py --check  # exit 1 if the committed reference is stale

Exit status 2 means the reference cannot be generated (protoc failed, or a plugin-facing comment is missing).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
PROTO_PACKAGE_DIR = Path("esper_core/leyline/v1")
OUTPUT = ROOT / "docs/reference/leyline.md"
REGENERATE = "python scripts/generate_field_reference.py"
PYTHON_MODULE = "esper_core.leyline"

#: Files in reading order: what Tolaria sends, what the controller answers, telemetry, learning, blueprints, budgets.
#: Files not listed follow in name order; ``enums.proto`` holds only enums, which get their own part.
FILE_ORDER = (
    "state.proto",
    "control.proto",
    "telemetry.proto",
    "learning.proto",
    "blueprints.proto",
    "budgets.proto",
)
#: Messages placed first in their file's part, in this order (the ones a plugin builds or reads); the others follow
#: in declaration order.
MESSAGE_ORDER = (
    "SystemStatePacket",
    "TrainingMetrics",
    "HardwareContext",
    "SeedState",
    "AdaptationCommand",
    "CommandSeedOperation",
    "DecisionMetadata",
    "CommandSecurity",
    "CommandOptimizerAdjustment",
    "CommandCircuitBreaker",
    "CommandRollback",
    "CommandResult",
    "GateResult",
    "SeedLifecycleEvent",
    "TelemetryPacket",
    "MetricPoint",
    "TelemetryEvent",
    "TraceSpan",
    "SystemHealth",
    "FieldReport",
    "FieldReportDelta",
    "MitigationAction",
    "PolicyUpdate",
    "BlueprintDescriptor",
    "BlueprintParameterBounds",
)
#: Enums placed first, in this order (the lifecycle and the command vocabulary); the others follow in the order the
#: message sections first use them, then in declaration order.
ENUM_ORDER = (
    "SeedLifecycleStage",
    "SeedOperation",
    "CommandType",
    "CommandStatus",
    "SecurityRejectionReason",
    "SeedLifecycleGate",
    "SlotKind",
    "BlendSchedule",
    "OptimizerFamily",
    "CircuitBreakerState",
    "TelemetryLevel",
    "MessagePriority",
    "HealthStatus",
    "FieldReportOutcome",
    "BlueprintTier",
)
#: The plugin-facing messages: every field and enum value these reach (through message and enum fields) must have
#: a comment.
DOCUMENTED_ROOTS = ("SystemStatePacket", "AdaptationCommand", "CommandResult", "TelemetryPacket", "FieldReport")

SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}
#: Types from outside the contracts, linked to their own documentation.
EXTERNAL = {
    "google.protobuf.Timestamp": "https://protobuf.dev/reference/protobuf/google.protobuf/#timestamp",
}
# SourceCodeInfo path components (descriptor.proto field numbers).
FILE_MESSAGE, FILE_ENUM, FILE_SYNTAX = 4, 5, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2


class ReferenceError(Exception):
    """The contracts cannot be turned into a reference (protoc failed, a comment is missing, an order is stale)."""


@attrs.frozen
class Field:
    name: str
    number: int
    type_name: str  # a scalar name, or a fully qualified message or enum name (without the leading dot)
    label: str  # "", "optional", "repeated", "map" or "oneof <name>"
    key_type: str  # for maps: the key's scalar type
    comment: str


@attrs.frozen
class Message:
    name: str  # qualified within the package: "SeedState", or "Outer.Inner" for a nested message
    full_name: str
    file: str
    comment: str
    fields: tuple[Field, ...]
    reserved: tuple[str, ...]


@attrs.frozen
class EnumValue:
    name: str
    number: int
    comment: str


@attrs.frozen
class Enum:
    name: str
    full_name: str
    file: str
    comment: str
    values: tuple[EnumValue, ...]


@attrs.frozen
class Contracts:
    package: str
    files: dict[str, str]  # file name -> its header comment
    messages: dict[str, Message]  # by full name, in declaration order
    enums: dict[str, Enum]  # by full name, in declaration order


# -- reading the contracts ------------------------------------------------------------------------------------------
def descriptor_set(
    contracts: Path = CONTRACTS, package_dir: Path = PROTO_PACKAGE_DIR
) -> descriptor_pb2.FileDescriptorSet:
    """Have protoc parse every contract into a descriptor set that keeps the comments (``--include_source_info``)."""
    try:
        import grpc_tools
    except ImportError:
        raise ReferenceError(
            "grpcio-tools (protoc) is not installed; install the pinned generator with: "
            "pip install -r requirements/codegen.txt"
        ) from None

    protos = sorted((contracts / package_dir).glob("*.proto"))
    if not protos:
        raise ReferenceError(f"no .proto files under {contracts / package_dir}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "leyline.binpb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{contracts}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *[str(p.relative_to(contracts)) for p in protos],
        ]
        result = subprocess.run(command, cwd=contracts, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ReferenceError(f"protoc failed:\n{result.stderr}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def clean_comment(text: str) -> str:
    """A protoc comment as Markdown paragraphs: each line stripped, lines joined, blank lines kept as breaks."""
    paragraphs: list[list[str]] = [[]]
    for line in text.strip("\n").splitlines():
        stripped = line.strip()
        if stripped:
            paragraphs[-1].append(stripped)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(lines) for lines in paragraphs if lines)


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Each element's documentation, by its SourceCodeInfo path: the leading comment, then any trailing one. The
    file's own description is the comment above ``syntax``, attached or separated from it by a blank line."""
    found: dict[tuple[int, ...], str] = {}
    for location in file.source_code_info.location:
        parts = [clean_comment(location.leading_comments), clean_comment(location.trailing_comments)]
        if tuple(location.path) == (FILE_SYNTAX,):
            parts = [clean_comment(text) for text in location.leading_detached_comments] + parts
        text = "\n\n".join(part for part in parts if part)
        if text:
            found[tuple(location.path)] = text
    return found


def read_contracts(fds: descriptor_pb2.FileDescriptorSet) -> Contracts:
    """The messages and enums of the package, with their comments, in declaration order."""
    packages = {file.package for file in fds.file if file.source_code_info.location}
    if len(packages) != 1:
        raise ReferenceError(f"the contracts must share one protobuf package, found {sorted(packages)}")
    package = packages.pop()
    files: dict[str, str] = {}
    messages: dict[str, Message] = {}
    enums: dict[str, Enum] = {}
    for file in fds.file:
        if file.package != package:
            continue
        name = Path(file.name).name
        comments = _comments(file)
        files[name] = comments.get((FILE_SYNTAX,), "")
        for index, message in enumerate(file.message_type):
            _read_message(message, (FILE_MESSAGE, index), "", package, name, comments, messages, enums)
        for index, enum in enumerate(file.enum_type):
            _read_enum(enum, (FILE_ENUM, index), "", package, name, comments, enums)
    return Contracts(package=package, files=files, messages=messages, enums=enums)


def _read_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    package: str,
    file: str,
    comments: dict[tuple[int, ...], str],
    enums: dict[str, Enum],
) -> None:
    name = prefix + enum.name
    values = tuple(
        EnumValue(value.name, value.number, comments.get((*path, ENUM_VALUE, index), ""))
        for index, value in enumerate(enum.value)
    )
    enums[f"{package}.{name}"] = Enum(name, f"{package}.{name}", file, comments.get(path, ""), values)


def _read_message(
    message: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    package: str,
    file: str,
    comments: dict[tuple[int, ...], str],
    messages: dict[str, Message],
    enums: dict[str, Enum],
) -> None:
    name = prefix + message.name
    map_entries = {nested.name: nested for nested in message.nested_type if nested.options.map_entry}
    fields = []
    for index, field in enumerate(message.field):
        label, key_type, type_name = "", "", _type_of(field)
        entry_name = field.type_name.rsplit(".", 1)[-1]
        if field.label == field.LABEL_REPEATED and entry_name in map_entries and field.type_name:
            key, value = map_entries[entry_name].field
            label, key_type, type_name = "map", _type_of(key), _type_of(value)
        elif field.label == field.LABEL_REPEATED:
            label = "repeated"
        elif field.proto3_optional:
            label = "optional"
        elif field.HasField("oneof_index"):
            label = f"oneof {message.oneof_decl[field.oneof_index].name}"
        comment = comments.get((*path, MESSAGE_FIELD, index), "")
        fields.append(Field(field.name, field.number, type_name, label, key_type, comment))
    reserved = tuple(
        str(r.start) if r.end - 1 == r.start else f"{r.start} to {r.end - 1}" for r in message.reserved_range
    ) + tuple(f'"{reserved_name}"' for reserved_name in message.reserved_name)
    messages[f"{package}.{name}"] = Message(
        name, f"{package}.{name}", file, comments.get(path, ""), tuple(fields), reserved
    )
    for index, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            nested_path = (*path, MESSAGE_NESTED, index)
            _read_message(nested, nested_path, f"{name}.", package, file, comments, messages, enums)
    for index, enum in enumerate(message.enum_type):
        _read_enum(enum, (*path, MESSAGE_ENUM, index), f"{name}.", package, file, comments, enums)


def _type_of(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        return field.type_name.lstrip(".")
    return SCALARS[field.type]


# -- completeness ---------------------------------------------------------------------------------------------------
def reachable(contracts: Contracts, roots: Iterable[str]) -> tuple[list[Message], list[Enum]]:
    """The messages and enums reachable from ``roots`` (short names) through fields, in discovery order."""
    seen: dict[str, None] = {}
    pending = [f"{contracts.package}.{root}" for root in roots]
    for full_name in pending:
        if full_name not in contracts.messages:
            raise ReferenceError(f"{full_name} is not a message of the contracts (update DOCUMENTED_ROOTS)")
    known = set(contracts.messages) | set(contracts.enums)
    while pending:
        full_name = pending.pop(0)
        if full_name in seen:
            continue
        seen[full_name] = None
        message = contracts.messages.get(full_name)
        if message is not None:
            pending += [field.type_name for field in message.fields if field.type_name in known]
    return (
        [contracts.messages[n] for n in seen if n in contracts.messages],
        [contracts.enums[n] for n in seen if n in contracts.enums],
    )


def undocumented(contracts: Contracts, roots: Iterable[str] = DOCUMENTED_ROOTS) -> list[str]:
    """Every message, field, enum and enum value reachable from ``roots`` that has no comment."""
    messages, enums = reachable(contracts, roots)
    missing = []
    for message in messages:
        if not message.comment:
            missing.append(f"message {message.name} ({message.file})")
        missing += [f"field {message.name}.{f.name} ({message.file})" for f in message.fields if not f.comment]
    for enum in enums:
        if not enum.comment:
            missing.append(f"enum {enum.name} ({enum.file})")
        missing += [f"enum value {enum.name}.{v.name} ({enum.file})" for v in enum.values if not v.comment]
    return missing


# -- rendering ------------------------------------------------------------------------------------------------------
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def markdown_text(text: str, *, in_table: bool = False) -> str:
    """Comment text as Markdown: ``<``, ``>`` and ``*`` escaped outside code spans (so ``<name>`` stays visible and
    ``*_UNSPECIFIED`` starts no emphasis); in a table cell, ``|`` escaped and paragraphs joined with ``<br>``."""
    pieces = []
    position = 0
    for match in _CODE_SPAN.finditer(text):
        pieces.append(_escape(text[position : match.start()]))
        pieces.append(match.group(0).replace("|", "\\|") if in_table else match.group(0))
        position = match.end()
    pieces.append(_escape(text[position:]))
    result = "".join(pieces)
    if in_table:
        result = result.replace("\n\n", "<br><br>").replace("\n", " ")
        result = re.sub(r"(?<!\\)\|", "\\|", result)
    return result


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")


def anchor(name: str) -> str:
    """The GitHub anchor of a ``### <name>`` heading."""
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


class Renderer:
    def __init__(
        self,
        contracts: Contracts,
        message_order: Sequence[str] = MESSAGE_ORDER,
        enum_order: Sequence[str] = ENUM_ORDER,
    ) -> None:
        self.contracts = contracts
        self.order = tuple(message_order)
        self.enums_first = tuple(enum_order)

    def short(self, full_name: str) -> str:
        return full_name.removeprefix(self.contracts.package + ".")

    def type_link(self, type_name: str) -> str:
        if type_name in self.contracts.messages or type_name in self.contracts.enums:
            name = self.short(type_name)
            return f"[`{name}`](#{anchor(name)})"
        if type_name in EXTERNAL:
            return f"[`{type_name}`]({EXTERNAL[type_name]})"
        return f"`{type_name}`"

    def field_type(self, field: Field) -> str:
        if field.label != "map":
            return self.type_link(field.type_name)
        if field.type_name in SCALARS.values():
            return f"`map<{field.key_type}, {field.type_name}>`"
        return f"`map<{field.key_type},` {self.type_link(field.type_name)}`>`"

    def message_order(self) -> list[tuple[str, list[Message]]]:
        """The files with messages, in :data:`FILE_ORDER`, each with its messages in reading order."""
        by_file: dict[str, list[Message]] = {}
        for message in self.contracts.messages.values():
            by_file.setdefault(message.file, []).append(message)
        listed = [file for file in FILE_ORDER if file in by_file]
        files = listed + sorted(set(by_file) - set(listed))
        rank = {name: index for index, name in enumerate(self.order)}
        known = {message.name for message in self.contracts.messages.values()}
        stale = [name for name in self.order if name not in known]
        if stale:
            raise ReferenceError(f"MESSAGE_ORDER names messages the contracts lack: {', '.join(stale)}")
        ordered = []
        for file in files:
            messages = by_file[file]
            declared = {message.name: index for index, message in enumerate(messages)}
            messages = sorted(messages, key=lambda m: (rank.get(m.name, len(rank)), declared[m.name]))
            ordered.append((file, messages))
        return ordered

    def enum_order(self, messages: Sequence[Message]) -> list[Enum]:
        """The enums of :data:`ENUM_ORDER`, then the others in the order the message sections first use them, then the
        unused ones in declaration order."""
        by_name = {enum.name: full_name for full_name, enum in self.contracts.enums.items()}
        stale = [name for name in self.enums_first if name not in by_name]
        if stale:
            raise ReferenceError(f"ENUM_ORDER names enums the contracts lack: {', '.join(stale)}")
        order: dict[str, None] = dict.fromkeys(by_name[name] for name in self.enums_first)
        for message in messages:
            for field in message.fields:
                if field.type_name in self.contracts.enums:
                    order.setdefault(field.type_name, None)
        for full_name in self.contracts.enums:
            order.setdefault(full_name, None)
        return [self.contracts.enums[full_name] for full_name in order]

    def render(self) -> str:
        parts = self.message_order()
        messages = [message for _, file_messages in parts for message in file_messages]
        enums = self.enum_order(messages)
        out: list[str] = []
        out += self._preamble(parts, enums)
        for file, file_messages in parts:
            out += self._file_part(file, file_messages)
        out += ["## Enums", ""]
        for file in sorted({enum.file for enum in enums}):
            out += [f"Enums of `{file}`:", ""]
            header = self.contracts.files.get(file, "")
            if header:
                out += [markdown_text(header), ""]
        for enum in enums:
            out += self._enum_section(enum)
        return "\n".join(out).rstrip("\n") + "\n"

    def _preamble(self, parts: list[tuple[str, list[Message]]], enums: Sequence[Enum]) -> list[str]:
        source = (CONTRACTS / PROTO_PACKAGE_DIR).relative_to(ROOT).as_posix()
        out = [
            "# Leyline message reference",
            "",
            f"<!-- Generated by scripts/generate_field_reference.py from {source}/*.proto. Do not edit: change the",
            f"     comments in the .proto files, then run `{REGENERATE}`. -->",
            "",
            f"Every message and enum of the protobuf package `{self.contracts.package}`, with what each field means,",
            "its unit, when it is set, who fills it and what a consumer may rely on. The text is the comments of",
            f"[`{source}/`](../../{source}/); the generated Python classes carry it too (in their `.pyi` stubs).",
            "Import any of them by its short name:",
            f"`from {PYTHON_MODULE} import SystemStatePacket, SeedLifecycleStage`.",
            "",
            "How to read the tables (proto3):",
            "",
            '- **Label** blank: a singular field. A scalar or enum then always has a value, its default (`0`, `""`,',
            '  `false`, the enum\'s value 0) when nobody set it, so a reader cannot tell "unset" from zero; a message',
            "  field has presence (`HasField`).",
            '- **optional**: a scalar with presence: test `HasField("name")` before reading. Absent means "not',
            '  measured" or "not applicable", never zero.',
            "- **repeated**: a list, possibly empty. **map**: a key-value map; never rely on its iteration order.",
            '- **oneof** *name*: at most one field of the group is set; `WhichOneof("name")` says which.',
            '- Enum value 0 is always `*_UNSPECIFIED` or `*_UNKNOWN`, and means "not set". Values are append-only: a',
            "  consumer must tolerate numbers it does not know.",
            "- Field numbers are the wire identity of a field; they never change or get reused.",
            "",
            "## Contents",
            "",
        ]
        for file, file_messages in parts:
            links = ", ".join(f"[{m.name}](#{anchor(m.name)})" for m in file_messages)
            out.append(f"- `{file}`: {links}")
        out.append("- Enums: " + ", ".join(f"[{e.name}](#{anchor(e.name)})" for e in enums))
        out.append("")
        return out

    def _file_part(self, file: str, messages: Sequence[Message]) -> list[str]:
        out = [f"## Messages of `{file}`", ""]
        header = self.contracts.files.get(file, "")
        if header:
            out += [markdown_text(header), ""]
        for message in messages:
            out += self._message_section(message)
        return out

    def _message_section(self, message: Message) -> list[str]:
        out = [f"### {message.name}", ""]
        out += [f"`{message.full_name}` in `{message.file}`; Python: `{PYTHON_MODULE}.{message.name}`.", ""]
        if message.comment:
            out += [markdown_text(message.comment), ""]
        if message.fields:
            out += ["| Field | Type | Label | No. | Description |", "|---|---|---|---:|---|"]
            for field in message.fields:
                label = field.label
                if label.startswith("oneof "):
                    label = f"oneof `{label.removeprefix('oneof ')}`"
                out.append(
                    f"| `{field.name}` | {self.field_type(field)} | {label} | {field.number} | "
                    f"{markdown_text(field.comment, in_table=True)} |"
                )
            out.append("")
        else:
            out += ["No fields.", ""]
        if message.reserved:
            out += [f"Reserved field numbers (never to be used): {', '.join(message.reserved)}.", ""]
        return out

    def _enum_section(self, enum: Enum) -> list[str]:
        out = [f"### {enum.name}", ""]
        out += [f"`{enum.full_name}` in `{enum.file}`; Python: `{PYTHON_MODULE}.{enum.name}`.", ""]
        if enum.comment:
            out += [markdown_text(enum.comment), ""]
        out += ["| Value | No. | Description |", "|---|---:|---|"]
        for value in enum.values:
            out.append(f"| `{value.name}` | {value.number} | {markdown_text(value.comment, in_table=True)} |")
        out.append("")
        return out


def render(
    contracts: Contracts, message_order: Sequence[str] = MESSAGE_ORDER, enum_order: Sequence[str] = ENUM_ORDER
) -> str:
    """The Markdown reference of ``contracts``; the orders name the messages placed first in their file and the enums
    placed first."""
    return Renderer(contracts, message_order, enum_order).render()


def generate(contracts_dir: Path = CONTRACTS) -> str:
    """The reference for the contracts under ``contracts_dir``; raises if a plugin-facing element lacks a comment."""
    contracts = read_contracts(descriptor_set(contracts_dir))
    missing = undocumented(contracts)
    if missing:
        raise ReferenceError(
            "these plugin-facing elements have no comment in the .proto files (a leading // comment that says what "
            "it means, its unit, when it is set, who fills it and what a consumer may rely on):\n  "
            + "\n  ".join(missing)
        )
    return render(contracts)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed reference differs")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the reference file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        text = generate()
    except ReferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output: Path = args.output
    if not args.check:
        _write(output, text)
        print(f"wrote {_display(output)} ({len(text.splitlines())} lines)")
        return 0
    current = output.read_text(encoding="utf-8") if output.exists() else None
    if current != text:
        why = "is missing" if current is None else "differs from what the contracts generate"
        fix = REGENERATE if output.resolve() == OUTPUT else f"{REGENERATE} --output {_display(output)}"
        print(f"The Leyline field reference {_display(output)} {why}.")
        print(f"Run: {fix}, then commit the result.")
        return 1
    print(f"The Leyline field reference is up to date ({_display(output)}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
