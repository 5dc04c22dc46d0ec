"""Tezzeret: turns a blueprint, its parameters and a slot shape into a checked artifact.

For one build it: validates the parameters and slot against the descriptor; instantiates the module with a seed
derived from the artifact key (so the same request always gives the same initial weights, and the caller's random
stream is left exactly as it was); probes it on random input of the shape it reads (output of the shape it writes,
dtype, finiteness, initial output near zero); checks the catalog's parameter-count estimate against the module;
times the forward pass; optionally compiles it (checked against eager, eager on failure); and serializes
descriptor + parameters + guard spec + ``state_dict`` with a SHA-256 over the file's bytes. A failed check raises
:class:`ArtifactBuildError` naming the blueprint, the check and its numbers. Never a pickled module.

A residual slot's module reads and writes one activation, so the probe has the slot's shape and so must the output.
A width slot's module reads the earlier activation (``slot.read_shape``) and writes the later one (``slot.shape``):
the probe has the read shape, the output must have the written shape, and the guard records both sides.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from esper_core.leyline import BlueprintDescriptor
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_urza import __version__
from esper_urza.errors import ArtifactBuildError, ArtifactIntegrityError
from esper_urza.options import TezzeretOptions
from esper_urza.parameters import (
    artifact_key,
    check_slot,
    describe_blueprint,
    resolve_parameters,
    tier_name,
)
from esper_urza.records import ARTIFACT_FORMAT, ArtifactRecord, BuiltArtifact, GuardSpec, encode_record, sha256_of

Refuse = Callable[..., ArtifactBuildError]

#: A forward slower than this is timed once more rather than ``latency_repeats`` times.
_SLOW_FORWARD_MS = 20.0


@contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block with the CPU generator seeded to ``seed`` (or untouched), restoring its state afterwards."""
    generator = torch.default_generator
    state = generator.get_state()
    try:
        if seed is not None:
            generator.manual_seed(seed)
        yield
    finally:
        generator.set_state(state)


def seed_for(key: str) -> int:
    return int(key[:15], 16)


def find_descriptor(catalog: BlueprintCatalog, blueprint_id: str) -> BlueprintDescriptor:
    for descriptor in catalog.descriptors():
        if descriptor.blueprint_id == blueprint_id:
            return descriptor
    raise KeyError(f"catalog {catalog.name!r} has no blueprint {blueprint_id!r}")


def serialize(record: ArtifactRecord, state_dict: Mapping[str, Tensor]) -> bytes:
    """The artifact file's bytes: ``torch.save`` of plain data and tensors only."""
    payload = {
        "format": ARTIFACT_FORMAT,
        "record": encode_record(record),
        "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_artifact(data: bytes, *, sha256: str, path: str = "") -> tuple[ArtifactRecord, dict[str, Tensor]]:
    """Parse artifact bytes with ``torch.load(weights_only=True)``; the caller has already checked ``sha256``."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"not an {ARTIFACT_FORMAT} file")
        record = ArtifactRecord.from_json(json.loads(payload["record"]), sha256=sha256, size_bytes=len(data), path=path)
        state_dict = payload["state_dict"]
        if not isinstance(state_dict, dict) or not all(
            isinstance(name, str) and isinstance(tensor, Tensor) for name, tensor in state_dict.items()
        ):
            raise ValueError("its state_dict is not a mapping of names to tensors")
    except Exception as error:
        raise ArtifactIntegrityError(
            f"artifact {path or '(bytes)'} is unreadable: {type(error).__name__}: {error}"
        ) from error
    return record, state_dict


class Tezzeret:
    """Builds checked artifacts. One instance serves any number of catalogs."""

    def __init__(self, options: TezzeretOptions | None = None) -> None:
        self.options = options or TezzeretOptions()

    def build(
        self, catalog: BlueprintCatalog, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]
    ) -> BuiltArtifact:
        """Build, check and serialize. ``KeyError``: unknown blueprint; ``ValueError``: bad parameters or slot;
        :class:`ArtifactBuildError`: a check failed."""
        started = time.perf_counter()
        descriptor = find_descriptor(catalog, blueprint_id)
        resolved = resolve_parameters(descriptor, parameters)
        check_slot(descriptor, slot)
        key = artifact_key(catalog.name, blueprint_id, resolved, slot)

        def refuse(check: str, detail: str, **numbers: float | int | str) -> ArtifactBuildError:
            return ArtifactBuildError(
                describe_blueprint(descriptor), slot.describe(), resolved, check=check, detail=detail, numbers=numbers
            )

        with isolated_rng(seed_for(key)):
            try:
                module = catalog.build(blueprint_id, slot, resolved)
            except (KeyError, ValueError):
                raise
            except Exception as error:
                raise refuse("build", f"the builder raised {type(error).__name__}: {error}") from error
            if not isinstance(module, nn.Module):
                raise refuse("build", f"the builder returned {type(module).__name__}, not a torch.nn.Module")
            generator = torch.Generator().manual_seed(seed_for(key))
            probe = torch.randn(self.options.probe_batch, *slot.input.shape, generator=generator)
        module.eval()
        report: dict[str, Any] = {}
        output = self._forward(module, probe, refuse)
        self._check_output(probe, output, slot, refuse, report)
        count = self._check_parameter_count(
            catalog, blueprint_id=blueprint_id, slot=slot, parameters=resolved, module=module, refuse=refuse
        )
        latency_ms = self._time_forward(module, probe)
        report["forward_latency_samples"] = latency_ms[1]
        if self.options.max_forward_ms is not None and latency_ms[0] > self.options.max_forward_ms:
            raise refuse(
                "latency",
                f"median forward {latency_ms[0]:.2f} ms exceeds the limit of {self.options.max_forward_ms:g} ms",
                median_ms=latency_ms[0],
                limit_ms=self.options.max_forward_ms,
            )
        compiled = self._compile(module, probe, output, report) if self.options.compile else False
        state_dict = module.state_dict()
        record = ArtifactRecord(
            key=key,
            catalog=catalog.name,
            blueprint_id=blueprint_id,
            name=descriptor.name,
            tier=tier_name(descriptor.tier),
            risk=float(descriptor.risk),
            stage=int(descriptor.stage),
            quarantine_only=bool(descriptor.quarantine_only),
            approval_required=bool(descriptor.approval_required),
            parameters=resolved,
            guard=GuardSpec.of(slot, str(probe.dtype).split(".")[-1]),
            sha256="",
            size_bytes=0,
            parameter_count=count,
            forward_latency_ms=latency_ms[0],
            build_ms=(time.perf_counter() - started) * 1000.0,
            initial_output_ratio=float(report["initial_output_ratio"]),
            compiled=compiled,
            created_at=time.time(),
            descriptor_bytes=descriptor.SerializeToString(deterministic=True),
            versions={"torch": torch.__version__, "esper_urza": __version__, "python": platform.python_version()},
            report=report,
        )
        state = {name: tensor.detach().cpu().clone().contiguous() for name, tensor in state_dict.items()}
        data = serialize(record, state)
        # The record inside the file cannot hold the file's own hash; the library's copy does.
        stored = ArtifactRecord.from_json(record.to_json(), sha256=sha256_of(data), size_bytes=len(data))
        return BuiltArtifact(data, stored, state)

    # -- checks -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _forward(module: nn.Module, probe: Tensor, refuse: Refuse) -> Tensor:
        try:
            with torch.no_grad():
                output = module(probe)
        except Exception as error:
            raise refuse("forward", f"the forward pass raised {type(error).__name__}: {error}") from error
        if not isinstance(output, Tensor):
            raise refuse("output_type", f"the forward pass returned {type(output).__name__}, not a tensor")
        return output

    def _check_output(
        self, probe: Tensor, output: Tensor, slot: SlotShape, refuse: Refuse, report: dict[str, Any]
    ) -> None:
        expected = (probe.shape[0], *(int(size) for size in slot.shape))
        if tuple(output.shape) != expected:
            whose = (
                f"the written activation's {list(expected)} (it read {list(probe.shape)})"
                if slot.is_width
                else f"the input's {list(expected)}"
            )
            raise refuse(
                "shape",
                f"output shape {list(output.shape)} differs from {whose}",
                expected=str(list(expected)),
                got=str(list(output.shape)),
            )
        if output.dtype != probe.dtype:
            raise refuse("dtype", f"output dtype {output.dtype} differs from the input's {probe.dtype}")
        finite = torch.isfinite(output)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise refuse(
                "finite",
                f"{bad} of {output.numel()} outputs are not finite on random input",
                non_finite=bad,
                total=output.numel(),
            )
        ratio = float(output.pow(2).mean().sqrt() / probe.pow(2).mean().sqrt().clamp_min(1e-12))
        report["initial_output_ratio"] = ratio
        if ratio > self.options.max_initial_output_ratio:
            raise refuse(
                "initial_output",
                f"initial output RMS is {ratio:.3g} of the input's (limit {self.options.max_initial_output_ratio:g}): "
                "grafting it would jolt the host; zero-initialize its last projection",
                ratio=ratio,
                limit=self.options.max_initial_output_ratio,
            )

    @staticmethod
    def _check_parameter_count(
        catalog: BlueprintCatalog,
        *,
        blueprint_id: str,
        slot: SlotShape,
        parameters: Mapping[str, float],
        module: nn.Module,
        refuse: Refuse,
    ) -> int:
        actual = sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
        try:
            estimate = int(catalog.parameter_count(blueprint_id, slot, parameters))
        except Exception as error:
            raise refuse("parameter_count", f"the estimate raised {type(error).__name__}: {error}") from error
        if estimate != actual:
            raise refuse(
                "parameter_count",
                f"the catalog estimates {estimate} trainable parameters, the module has {actual}",
                estimate=estimate,
                actual=actual,
            )
        return actual

    def _time_forward(self, module: nn.Module, probe: Tensor) -> tuple[float, list[float]]:
        samples: list[float] = []
        with torch.no_grad():
            for index in range(1 + self.options.latency_repeats):
                start = time.perf_counter()
                module(probe)
                elapsed = (time.perf_counter() - start) * 1000.0
                if index:  # the first call is a warm-up
                    samples.append(elapsed)
                    if elapsed > _SLOW_FORWARD_MS:
                        break
        return statistics.median(samples), [round(sample, 4) for sample in samples]

    def _compile(self, module: nn.Module, probe: Tensor, eager: Tensor, report: dict[str, Any]) -> bool:
        """Compile in place and compare with eager; on any failure stay eager and record why."""
        start = time.perf_counter()
        try:
            module.compile(backend=self.options.compile_backend)
            with torch.no_grad():
                compiled = module(probe)
            if not torch.allclose(compiled, eager, rtol=1e-4, atol=1e-5):
                difference = float((compiled - eager).abs().max())
                raise RuntimeError(f"compiled output differs from eager by up to {difference:.3g}")
        except Exception as error:  # noqa: BLE001 - any compiler failure means: stay eager, and say why
            report["compile_error"] = f"{type(error).__name__}: {error}"[:500]
            ok = False
        else:
            ok = True
        report["compile_backend"] = self.options.compile_backend
        report["compile_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
        return ok
