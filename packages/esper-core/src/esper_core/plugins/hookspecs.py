"""Every hook Esper calls. ``esper_core`` owns all of them; plugins implement them with ``@hookimpl``.

Hooks are named ``esper_<area>_<name>``. Each docstring states its call semantics in one fixed sentence, its
parameters, its return value, who calls it and when, and a complete example. ``docs/plugins.md`` has one section per
hook with its full signature (a test keeps the two in step).

Provider hooks contribute descriptors at setup; lifecycle hooks are notifications at run start, decision points
and run end. No hook is ever called per batch: a pluggy call costs microseconds, so the training loop resolves
its components once and calls plain objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from esper_core.plugins.markers import hookspec

if TYPE_CHECKING:
    import pluggy

    from esper_core.leyline import (
        AdaptationCommand,
        CommandResult,
        FieldReport,
        SeedLifecycleEvent,
        SystemStatePacket,
    )
    from esper_core.plugins.descriptors import (
        ArtifactStoreSpec,
        BlueprintCatalogSpec,
        BusBackendSpec,
        CliCommandSpec,
        ControllerSpec,
        PolicySpec,
        SeedExecutorSpec,
        ServiceSpec,
        TaskSpec,
        TelemetrySinkSpec,
    )
    from esper_core.plugins.runinfo import RunInfo

#: The fixed sentences that state a hook's call semantics; every hookspec docstring contains exactly one.
SEMANTICS_COLLECTED = "All implementations are called; their results are collected."
SEMANTICS_NOTIFY = "All implementations are called; return values are ignored."
SEMANTICS_HISTORIC = "Historic: replayed to plugins registered later; return values are ignored."
SEMANTICS_FIRSTRESULT = "Stops at first non-None result."


class CoreSpecs:
    """Hooks of the plugin system itself and of the ``esper`` command line."""

    @hookspec(historic=True)
    def esper_core_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
        """Add hook specifications of a plugin's own, so that it can offer extension points to other plugins.

        Historic: replayed to plugins registered later; return values are ignored.

        :param pluginmanager: the run's plugin manager; call ``pluginmanager.add_hookspecs(MySpecs)``.
        :returns: nothing.

        Called by: ``create_plugin_manager()``, once, before entry points are loaded.

        Example::

            class AcmeSpecs:
                @hookspec
                def acme_reward_terms(self): ...

            @hookimpl
            def esper_core_addhooks(pluginmanager):
                pluginmanager.add_hookspecs(AcmeSpecs)
        """

    @hookspec
    def esper_core_config_sections(self) -> Iterable[type]:
        """Contribute configuration sections: attrs classes decorated with ``@esper_core.config.section("path")``.

        All implementations are called; their results are collected.

        Options classes named by a descriptor's ``options`` field are registered automatically; use this hook
        for sections that belong to no single component. Two sections with one path merge their keys; the same
        key claimed twice is an error naming both.

        :returns: an iterable of section classes.

        Called by: the registry, when a configuration is loaded.

        Example::

            @section("acme")
            @attrs.frozen
            class AcmeOptions:
                verbose: bool = False

            @hookimpl
            def esper_core_config_sections():
                yield AcmeOptions
        """
        yield from ()

    @hookspec
    def esper_core_cli_commands(self) -> Iterable[CliCommandSpec]:
        """Contribute subcommands of the ``esper`` command line (``esper report`` comes from esper-nissa this way).

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.CliCommandSpec`.

        Called by: ``esper`` when it builds its argument parser.

        Example::

            def configure(parser):
                parser.add_argument("run_dir")

            def run(args):
                print("hello", args.run_dir)
                return 0

            @hookimpl
            def esper_core_cli_commands():
                yield CliCommandSpec(name="hello", help="Say hello to a run.", configure=configure, run=run)
        """
        yield from ()


class ProviderSpecs:
    """Provider hooks: each contributes descriptors of one plugin point; the configuration chooses by name."""

    @hookspec
    def esper_tamiyo_policies(self) -> Iterable[PolicySpec]:
        """Contribute Tamiyo policies, chosen by ``tamiyo.policy = "NAME"``.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.PolicySpec`; each factory returns an
            object satisfying :class:`esper_core.protocols.TamiyoPolicy`.

        Called by: the registry at setup, when the controller resolves its policy.

        Example::

            class AlwaysWait:
                name = "always-wait"
                def decide(self, state, blueprints):
                    return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)

            @hookimpl
            def esper_tamiyo_policies():
                yield PolicySpec(name="always-wait", factory=lambda context: AlwaysWait())
        """
        yield from ()

    @hookspec
    def esper_tamiyo_controllers(self) -> Iterable[ControllerSpec]:
        """Contribute controllers, chosen by ``tolaria.controller = "NAME"``: the component that turns a state
        packet into one signed command (risk engine, signing, field reports around a policy).

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.ControllerSpec`; each factory returns an
            object satisfying :class:`esper_core.protocols.Controller`.

        Called by: Tolaria at setup.

        Example::

            @hookimpl
            def esper_tamiyo_controllers():
                yield ControllerSpec(name="tamiyo", factory=build_controller, options=ControllerOptions)
        """
        yield from ()

    @hookspec
    def esper_urza_blueprint_catalogs(self) -> Iterable[BlueprintCatalogSpec]:
        """Contribute blueprint catalogs, chosen by ``urza.catalogs = ["NAME", ...]``.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.BlueprintCatalogSpec`; each factory
            returns an object satisfying :class:`esper_core.protocols.BlueprintCatalog`.

        Called by: the registry at setup, for the seed executor, the artifact store and the controller.

        Example::

            @hookimpl
            def esper_urza_blueprint_catalogs():
                yield BlueprintCatalogSpec(name="acme", factory=lambda context: AcmeCatalog())
        """
        yield from ()

    @hookspec
    def esper_urza_artifact_stores(self) -> Iterable[ArtifactStoreSpec]:
        """Contribute blueprint artifact stores, chosen by ``urza.store = "NAME"``.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.ArtifactStoreSpec`; each factory returns
            an object satisfying :class:`esper_core.protocols.ArtifactStore`.

        Called by: the seed executor at setup, to fetch the modules of germinating seeds.

        Example::

            @hookimpl
            def esper_urza_artifact_stores():
                yield ArtifactStoreSpec(name="urza", factory=build_library, options=LibraryOptions)
        """
        yield from ()

    @hookspec
    def esper_nissa_telemetry_sinks(self) -> Iterable[TelemetrySinkSpec]:
        """Contribute telemetry sinks; every sink named in ``nissa.sinks = ["NAME", ...]`` receives every packet.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.TelemetrySinkSpec`; each factory returns
            an object satisfying :class:`esper_core.protocols.TelemetrySink`.

        Called by: the registry at setup; the sinks are then fed from the telemetry stream at decision points.

        Example::

            class PrintSink:
                def emit(self, packet):
                    print(packet.source_subsystem, len(packet.metrics))
                def flush(self): ...
                def close(self): ...

            @hookimpl
            def esper_nissa_telemetry_sinks():
                yield TelemetrySinkSpec(name="print", factory=lambda context: PrintSink())
        """
        yield from ()

    @hookspec
    def esper_oona_bus_backends(self) -> Iterable[BusBackendSpec]:
        """Contribute Oona bus backends, chosen by ``oona.backend = "NAME"`` or by a URL whose scheme the backend
        declares (``oona.backend = "redis://127.0.0.1:6379/0"``).

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.BusBackendSpec`; each factory returns an
            object satisfying :class:`esper_core.oona.BusBackend`.

        Called by: the registry when a run or service opens its bus.

        Example::

            @hookimpl
            def esper_oona_bus_backends():
                yield BusBackendSpec(name="memory", factory=lambda context: MemoryBackend())
        """
        yield from ()

    @hookspec
    def esper_tolaria_tasks(self) -> Iterable[TaskSpec]:
        """Contribute tasks (a host model, its data, loss and metric), chosen by ``run.task = "NAME"``.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.TaskSpec`; each factory returns an
            object satisfying :class:`esper_core.protocols.Task`.

        Called by: Tolaria at setup.

        Example::

            @hookimpl
            def esper_tolaria_tasks():
                yield TaskSpec(name="my-task", factory=lambda context: MyTask(context.options), options=MyOptions)
        """
        yield from ()

    @hookspec
    def esper_kasmina_seed_executors(self) -> Iterable[SeedExecutorSpec]:
        """Contribute seed executors, chosen by ``tolaria.seed_executor = "NAME"``: the component that owns the
        seed slots in the host and applies adaptation commands.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.SeedExecutorSpec`; each factory returns
            an object satisfying :class:`esper_core.protocols.SeedExecutor`.

        Called by: Tolaria at setup.

        Example::

            @hookimpl
            def esper_kasmina_seed_executors():
                yield SeedExecutorSpec(name="kasmina", factory=build_kasmina, options=KasminaOptions)
        """
        yield from ()

    @hookspec
    def esper_weatherlight_services(self) -> Iterable[ServiceSpec]:
        """Contribute long-lived services that ``esper serve NAME`` runs under the Weatherlight supervisor.

        All implementations are called; their results are collected.

        :returns: an iterable of :class:`~esper_core.plugins.descriptors.ServiceSpec`; each factory returns an
            object satisfying :class:`esper_core.protocols.Service`.

        Called by: Weatherlight at startup.

        Example::

            @hookimpl
            def esper_weatherlight_services():
                yield ServiceSpec(name="tamiyo", factory=build_tamiyo_service)
        """
        yield from ()


class LifecycleSpecs:
    """Notifications at run start, at each decision point and at run end; never per batch."""

    @hookspec
    def esper_tolaria_run_started(self, run: RunInfo) -> None:
        """A run is about to train: its directory exists and its resolved configuration is written.

        All implementations are called; return values are ignored.

        :param run: the run's identity, directory and resolved configuration.
        :returns: nothing.

        Called by: Tolaria, once per run (again on resume, with ``run.resumed`` set).

        Example::

            @hookimpl
            def esper_tolaria_run_started(run):
                print("training", run.run_id, "in", run.run_dir)
        """

    @hookspec
    def esper_tolaria_decision(
        self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult
    ) -> None:
        """A decision point is complete: the controller decided and the seed executor applied the command.

        All implementations are called; return values are ignored.

        :param state: the state packet the decision was made on.
        :param command: the signed command (a no-op command when the controller chose to wait).
        :param result: what the seed executor did with it.
        :returns: nothing.

        Called by: Tolaria, at every decision point (the end of each epoch by default).

        Example::

            @hookimpl
            def esper_tolaria_decision(state, command, result):
                print(state.current_epoch, CommandType.Name(command.command_type), CommandStatus.Name(result.status))
        """

    @hookspec
    def esper_kasmina_seed_transition(self, event: SeedLifecycleEvent) -> None:
        """A seed slot changed lifecycle stage (germinated, advanced, fossilized, culled, reset).

        All implementations are called; return values are ignored.

        :param event: the transition, with the gate results that allowed or forced it.
        :returns: nothing.

        Called by: Tolaria, at the decision point after the transition happened.

        Example::

            @hookimpl
            def esper_kasmina_seed_transition(event):
                print(event.slot_id, SeedLifecycleStage.Name(event.to_stage), event.reason)
        """

    @hookspec
    def esper_tamiyo_field_report(self, report: FieldReport) -> None:
        """A field report was written: the judged outcome of one of the controller's decisions.

        All implementations are called; return values are ignored.

        :param report: the report, whole (decision state, command, measured delta and outcome).
        :returns: nothing.

        Called by: Tolaria, at the decision point after the controller closed the report's observation window.

        Example::

            @hookimpl
            def esper_tamiyo_field_report(report):
                print(report.blueprint_id, FieldReportOutcome.Name(report.outcome))
        """

    @hookspec
    def esper_tolaria_run_finished(self, run: RunInfo, summary: Mapping[str, float]) -> None:
        """A run has finished training (all epochs done, or stopped early).

        All implementations are called; return values are ignored.

        :param run: the run's identity, directory and resolved configuration.
        :param summary: final metrics (test accuracy, parameter count, wall time, ...).
        :returns: nothing.

        Called by: Tolaria, once, after the last checkpoint is written.

        Example::

            @hookimpl
            def esper_tolaria_run_finished(run, summary):
                print(run.run_id, summary["test_accuracy"])
        """


#: Every hookspec class, in the order they are added to a plugin manager.
ALL_SPECS: tuple[type, ...] = (CoreSpecs, ProviderSpecs, LifecycleSpecs)
