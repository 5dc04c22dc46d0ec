#!/usr/bin/env python3
"""Generate the Leyline Python bindings from ``contracts/`` into ``esper_core``.

The ``.proto`` tree under ``contracts/`` mirrors the Python import path (``esper_core/leyline/v1``), so protoc
writes package-qualified imports that work inside the installed package. The generator versions are pinned in
``requirements/codegen.txt``; the output is committed, and ``--check`` regenerates into a temporary directory and
fails on any difference (CI runs it).

Usage::

    python scripts/generate_leyline.py          # regenerate in place
    python scripts/generate_leyline.py --check  # exit 1 if the committed bindings are stale
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
PROTO_PACKAGE_DIR = Path("esper_core/leyline/v1")
OUTPUT_ROOT = ROOT / "packages/esper-core/src"
PINS = ROOT / "requirements/codegen.txt"


def read_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in PINS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def check_generator_versions() -> None:
    problems = []
    for name, wanted in read_pins().items():
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            problems.append(f"{name}=={wanted} is pinned but {found} is installed")
    if problems:
        sys.exit(
            "Leyline generator versions do not match requirements/codegen.txt:\n  "
            + "\n  ".join(problems)
            + "\nInstall them with: pip install -r requirements/codegen.txt"
        )


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every contract; return the generated files relative to ``out_root``."""
    import grpc_tools

    protos = sorted((CONTRACTS / PROTO_PACKAGE_DIR).glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files under {CONTRACTS / PROTO_PACKAGE_DIR}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    env = dict(os.environ)
    # protoc finds the mypy plugin (protoc-gen-mypy) on PATH; it sits beside this interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{CONTRACTS}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        *[str(p) for p in protos],
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")
    return sorted(p.relative_to(out_root) for p in (out_root / PROTO_PACKAGE_DIR).glob("*_pb2.py*"))


def committed_files() -> list[Path]:
    return sorted(p.relative_to(OUTPUT_ROOT) for p in (OUTPUT_ROOT / PROTO_PACKAGE_DIR).glob("*_pb2.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed bindings differ")
    args = parser.parse_args()
    check_generator_versions()

    if not args.check:
        for stale in committed_files():
            (OUTPUT_ROOT / stale).unlink()
        written = generate(OUTPUT_ROOT)
        print(f"generated {len(written)} files under {OUTPUT_ROOT / PROTO_PACKAGE_DIR}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = committed_files()
        problems = [f"missing from the tree: {p}" for p in sorted(set(fresh) - set(committed))]
        problems += [f"no longer generated: {p}" for p in sorted(set(committed) - set(fresh))]
        for rel in sorted(set(fresh) & set(committed)):
            if not filecmp.cmp(Path(tmp) / rel, OUTPUT_ROOT / rel, shallow=False):
                problems.append(f"differs from a fresh generation: {rel}")
    if problems:
        print("The committed Leyline bindings are stale:", *problems, sep="\n  ")
        print("Run: python scripts/generate_leyline.py, then commit the result.")
        return 1
    print(f"Leyline bindings are up to date ({len(fresh)} files).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
