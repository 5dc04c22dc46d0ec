"""Putting a run together from its configuration: every component through the registry, by name.

The order matters and is the same for a new run and a resumed one, so a checkpoint maps back onto the same
objects: signing key and bus, blueprint catalogs and artifact store, the task and its data, the host with its seed
slots, the optimizer, the controller, the telemetry sinks, the run record.

Each component the run calls (catalogs, store, task, seed executor, controller) is held behind a guard
(:func:`esper_core.plugin_failures.guard`), so that an exception it raises later, wherever it is caught, names the
plugin that raised it.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.config import EsperConfig
from esper_core.errors import ConfigError, EsperError
from esper_core.oona import Oona, OonaOptions
from esper_core.plugin_failures import first_argument, guard
from esper_core.plugins import BuildContext, Registry
from esper_core.plugins.options import PluginsOptions
from esper_core.plugins.selectors import NissaSelection, UrzaSelection
from esper_core.protocols import Controller, SeedExecutor, Task, TaskData, TelemetrySink
from esper_core.security_options import SecurityOptions
from esper_core.signing import SigningKey
from esper_core.storage import atomic_write_text, remove_stale_temporaries
from esper_core.tasks.reference import is_reference, load_reference
from esper_core.tolaria.checkpoint import DIRECTORY
from esper_core.tolaria.options import RunOptions, TolariaOptions
from esper_core.tolaria.record import RECORD_FILE, RunRecord
from esper_core.tolaria.record_mirror import RecordMirror
from esper_core.tolaria.step import check_precision

CONFIG_FILE = "config.toml"

#: A catalog's ``build`` is asked only for a blueprint the catalog offers, with parameters already checked against
#: its bounds (by the executor's G0 and by Tezzeret), so whatever it raises is a failure; ``parameter_count`` may
#: refuse with ``KeyError``/``ValueError`` (the executor asks before it checks the bounds).
CATALOG_REFUSALS: dict[str, tuple[type[BaseException], ...]] = {
    "build": (),
    "parameter_count": (EsperError, KeyError, ValueError),
}
#: An artifact store's documented refusals: ``KeyError`` (no catalog offers the blueprint), ``ValueError`` (bad
#: parameters or slot) and its own Esper errors (a build Tezzeret refused, a corrupt artifact).
STORE_REFUSALS: dict[str, tuple[type[BaseException], ...]] = {"fetch": (EsperError, KeyError, ValueError)}
BLUEPRINT_SUBJECTS = {
    "build": first_argument("blueprint_id"),
    "parameter_count": first_argument("blueprint_id"),
    "fetch": first_argument("blueprint_id"),
}


class RunError(EsperError):
    """A run cannot start or continue (its directory, its checkpoint, its data)."""


@attrs.define
class Split:
    """The tensors of one run, on its device."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None
    probe: tuple[torch.Tensor, torch.Tensor]


@attrs.define
class Run:
    run_id: str
    run_dir: Path
    config: EsperConfig
    registry: Registry
    options: RunOptions
    tolaria: TolariaOptions
    signing_key: SigningKey
    bus: Oona
    task: Task
    data: Split
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    executor: SeedExecutor
    controller: Controller
    sinks: list[TelemetrySink]
    catalogs: list[Any]
    store: Any
    record: RunRecord
    device: torch.device


def new_run_dir(options: RunOptions, task_name: str) -> tuple[str, Path]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    run_id = options.name or f"{task_name.replace(':', '-').replace('.', '-')}-{stamp}"
    run_dir = Path(options.runs_dir) / run_id
    if run_dir.exists():
        raise RunError(
            f"run directory {run_dir} already exists: resume it with `esper run --resume {run_dir}`, "
            "or choose another name (--set run.name=...)"
        )
    return run_id, run_dir


def device_of(options: RunOptions) -> torch.device:
    if options.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(options.device)
    except RuntimeError as error:
        raise RunError(f"run.device = {options.device!r} is not a device ({error}); use cpu, cuda or auto") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("run.device = 'cuda' but torch sees no CUDA device; use run.device = 'auto' or 'cpu'")
    return device


#: What a task must have (esper_core.protocols.Task), checked when it is built so a wrong factory fails clearly.
TASK_MEMBERS = ("name", "build_model", "slot_points", "data", "loss", "correct")


def build_task(registry: Registry, config: EsperConfig, run_dir: Path) -> Task:
    name = config.get(RunOptions).task
    if is_reference(name):
        built = load_reference(name)(BuildContext(registry=registry, config=config, run_dir=run_dir))
    else:
        built = registry.build(registry.task(name), config=config, run_dir=run_dir)
    missing = [member for member in TASK_MEMBERS if not hasattr(built, member)]
    if missing:
        raise RunError(
            f"run.task = {name!r} built a {type(built).__name__}, which is not a task: it lacks {', '.join(missing)}. "
            "A task factory returns an object with name, build_model(), slot_points(), data(), loss() and "
            "correct() (esper_core.protocols.Task), not the model itself"
        )
    task: Task = built
    return task


def _check_pair(task: str, split: str, inputs: Any, targets: Any) -> None:
    """One split of a task's data: inputs and targets both given, as many of each, and at least one."""
    if inputs is None or targets is None:
        given, missing = ("inputs", "targets") if targets is None else ("targets", "inputs")
        raise RunError(f"task {task!r} gave {split} {given} but no {split} {missing}; give both or neither")
    if len(inputs) != len(targets):
        raise RunError(
            f"task {task!r} gave {len(inputs)} {split} inputs but {len(targets)} {split} targets; they must pair up"
        )
    if len(inputs) == 0:
        optional = "" if split == "training" else f" (leave {split} inputs and targets None for none)"
        raise RunError(f"task {task!r} gave an empty {split} set{optional}; it needs at least one example")


def split_data(
    data: TaskData, options: RunOptions, tolaria: TolariaOptions, device: torch.device, task: str = "?"
) -> Split:
    """The task's data split for training, on ``device``; data a run cannot train on is a :class:`RunError`
    naming the task (an empty set would otherwise fail mid-epoch, after the run directory was made)."""
    generator = torch.Generator().manual_seed(options.seed)
    inputs, targets = data.train_inputs, data.train_targets
    _check_pair(task, "training", inputs, targets)
    for split, split_inputs, split_targets in (
        ("validation", data.val_inputs, data.val_targets),
        ("test", data.test_inputs, data.test_targets),
    ):
        if split_inputs is not None or split_targets is not None:
            _check_pair(task, split, split_inputs, split_targets)
    if data.val_inputs is not None:
        train, val = (inputs, targets), (data.val_inputs, data.val_targets)
    else:
        order = torch.randperm(len(inputs), generator=generator)
        held = max(1, int(len(inputs) * options.validation_fraction))
        if held >= len(inputs):
            raise RunError(
                f"task {task!r} gave {len(inputs)} training example{'s' * (len(inputs) != 1)}; holding out "
                f"{held} for validation (run.validation_fraction = {options.validation_fraction}) leaves none to "
                "train on. Give the task more data"
            )
        val_index, train_index = order[:held], order[held:]
        train, val = (inputs[train_index], targets[train_index]), (inputs[val_index], targets[val_index])
    if tolaria.max_validation_samples:
        val = (val[0][: tolaria.max_validation_samples], val[1][: tolaria.max_validation_samples])
    probe_index = torch.randperm(len(train[0]), generator=generator)[: tolaria.probe_size]
    test = (data.test_inputs, data.test_targets) if data.test_inputs is not None else None

    def on_device(pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return pair[0].to(device), pair[1].to(device)

    return Split(
        train=on_device(train),
        val=on_device(val),
        test=on_device(test) if test is not None else None,
        probe=on_device((train[0][probe_index], train[1][probe_index])),
    )


def make_optimizer(parameters: list[torch.nn.Parameter], options: TolariaOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=options.learning_rate, momentum=options.momentum, weight_decay=options.weight_decay
        )
    if options.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=options.weight_decay)
    return torch.optim.Adam(parameters, lr=options.learning_rate, weight_decay=options.weight_decay)


def assemble(
    registry: Registry,
    config: EsperConfig,
    run_dir: Path,
    run_id: str,
    *,
    signing_key: SigningKey | None = None,
    controller_of: Any = None,
    device: torch.device | None = None,
) -> Run:
    """Build every component of a run; the run directory must exist.

    A follower of a data-parallel run (docs/distributed.md) passes the leader's ``signing_key`` (its executor
    verifies the leader's commands), ``controller_of`` (a factory of the object standing in for the controller: a
    follower never decides) and its own ``device``."""
    options, tolaria = config.get(RunOptions), config.get(TolariaOptions)
    registry.check_required(config.get(PluginsOptions).required)
    torch.manual_seed(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = device if device is not None else device_of(options)
    check_precision(tolaria, device)
    if tolaria.accumulation_steps > options.batch_size:
        raise ConfigError(
            f"tolaria.accumulation_steps ({tolaria.accumulation_steps}) cannot exceed run.batch_size "
            f"({options.batch_size}): each micro-batch needs at least one example"
        )
    security = config.get(SecurityOptions)
    oona = config.get(OonaOptions)
    # A bus other processes can read is useless with a per-run random key: nothing it sends would verify anywhere.
    shared_bus = oona.backend != "memory"
    if tolaria.publish_record and not shared_bus:
        raise ConfigError(
            "tolaria.publish_record mirrors the run record for other processes, but oona.backend is 'memory' (this "
            "process only); set oona.backend to a shared bus (redis://HOST:PORT/DB) or leave publish_record off"
        )
    key = signing_key or SigningKey.resolve(required=security.require_secret or shared_bus, var=security.secret_env)
    backend = registry.build(registry.bus_backend(oona.backend), config=config)
    # A group of its own: runs sharing a Redis must each receive every telemetry packet and policy update.
    bus = Oona(backend, signing_key=key, options=oona, group=f"tolaria-{run_id}", consumer=run_id, source="tolaria")
    # Before any component is built: what they report while opening (an artifact store's repairs) reaches the sinks.
    bus.subscribe([bus.streams.telemetry, bus.streams.emergency])
    selection = config.get(UrzaSelection)
    catalogs = [
        guard(
            registry.build(registry.blueprint_catalog(name), config=config),
            kind="blueprint catalog", name=name, refusals=CATALOG_REFUSALS, subjects=BLUEPRINT_SUBJECTS,
        )
        for name in selection.catalogs
    ]  # fmt: skip
    store = guard(
        registry.build(
            registry.artifact_store(selection.store),
            config=config,
            run_dir=run_dir,
            catalogs=catalogs,
            bus=bus,
            training_run_id=run_id,
        ),
        kind="artifact store", name=selection.store, refusals=STORE_REFUSALS, subjects=BLUEPRINT_SUBJECTS,
    )  # fmt: skip
    task = guard(build_task(registry, config, run_dir), kind="task", name=options.task)
    data = split_data(task.data(), options, tolaria, device, task.name)
    model = task.build_model().to(device)
    executor: SeedExecutor = guard(
        registry.build(
            registry.seed_executor(tolaria.seed_executor),
            config=config,
            signing_key=key,
            bus=bus,
            run_dir=run_dir,
            store=store,
            catalogs=catalogs,
            training_run_id=run_id,
        ),
        kind="seed executor",
        name=tolaria.seed_executor,
    )
    points = list(task.slot_points())
    try:
        executor.attach(model, points, data.train[0][:2])
    except EsperError as error:  # the executor's reason, with the task whose slot points it refused
        raise RunError(f"task {task.name!r} cannot have seed slots at {points}: {error}") from error
    optimizer = make_optimizer(executor.host_parameters(), tolaria)
    executor.bind_optimizer(optimizer)
    executor.set_probe(data.probe[0], data.probe[1], task.loss)
    controller: Controller = (
        controller_of()
        if controller_of is not None
        else guard(
            registry.build(
                registry.controller(tolaria.controller),
                config=config,
                signing_key=key,
                bus=bus,
                run_dir=run_dir,
                catalogs=catalogs,
                store=store,
                training_run_id=run_id,
            ),
            kind="controller",
            name=tolaria.controller,
        )
    )
    sinks = [
        guard(
            registry.build(registry.telemetry_sink(name), config=config, run_dir=run_dir, bus=bus),
            kind="telemetry sink",
            name=name,
        )
        for name in config.get(NissaSelection).sinks
    ]
    record = RunRecord(run_dir / RECORD_FILE)
    if tolaria.publish_record:
        record.on_written = RecordMirror(bus, run_id, run_dir / CONFIG_FILE)
    return Run(
        run_id=run_id, run_dir=run_dir, config=config, registry=registry, options=options, tolaria=tolaria,
        signing_key=key, bus=bus, task=task, data=data, model=model, optimizer=optimizer, executor=executor,
        controller=controller, sinks=sinks, catalogs=catalogs, store=store, record=record,
        device=device,
    )  # fmt: skip


def start_run(registry: Registry, config: EsperConfig, *, device: torch.device | None = None) -> Run:
    """A new run: its directory, its resolved configuration written down, and every component built."""
    options = config.get(RunOptions)
    run_id, run_dir = new_run_dir(options, options.task)
    run_dir.mkdir(parents=True)
    try:
        atomic_write_text(run_dir / CONFIG_FILE, config.to_toml())
        return assemble(registry, config, run_dir, run_id, device=device)
    except BaseException:
        # Nothing trained yet: leave no half-made directory behind, so the same command can simply be run again.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


#: The only keys a resume may change: where telemetry goes (``nissa.sinks`` and the sinks' own sections), which
#: never changes what is trained.
RESUMABLE_PREFIX = "nissa."


def reopen_run(
    registry: Registry, run_dir: Path, overrides: Sequence[str] = (), *, device: torch.device | None = None
) -> Run:
    """An existing run, rebuilt exactly from the configuration it recorded (environment overrides do not apply).

    ``overrides`` may change the telemetry sinks (``nissa.*`` keys) and nothing else; the recorded configuration is
    then updated (atomically), so a later resume keeps the new sinks.
    """
    file = run_dir / CONFIG_FILE
    if not file.exists():
        raise RunError(
            f"{run_dir} is not a run directory (it has no {CONFIG_FILE}); give the directory `esper run` made"
        )
    refused = [item for item in overrides if not item.strip().startswith(RESUMABLE_PREFIX)]
    if refused:
        raise RunError(
            f"a resumed run keeps the configuration it recorded; only the telemetry sinks ({RESUMABLE_PREFIX}* keys) "
            f"may change on --resume, not {refused[0].split('=', 1)[0].strip()!r}"
        )
    config = registry.load_config(file, env={}, overrides=overrides)
    if overrides:
        atomic_write_text(file, config.to_toml())
    # Only this process writes the run directory now: a temporary file there was left by a kill mid-write.
    for directory in (run_dir, run_dir / DIRECTORY):
        remove_stale_temporaries(directory)
    return assemble(registry, config, run_dir, run_dir.name, device=device)
