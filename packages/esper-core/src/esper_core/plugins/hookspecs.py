"""Every hook Esper calls. ``esper_core`` owns all of them; plugins implement them with ``@hookimpl``.

Hooks are named ``esper_<area>_<name>``. Each docstring states its call semantics in one fixed sentence, its
parameters, its return value, who calls it and when, and a complete example. ``docs/plugins.md`` has one section per
hook with its full signature (a test keeps the two in step).

Provider hooks contribute descriptors at setup; their specs are generated from the table of plugin points
(:mod:`esper_core.plugins.points`), which is where a plugin point is defined. Hook wrappers are refused on them
(a provider hook collects descriptors; to replace what another plugin provides, block that plugin and provide
your own). lifecycle hooks are notifications at run start, decision points
and run end. No hook is ever called per batch: a pluggy call costs microseconds, so the training loop resolves
its components once and calls plain objects.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from esper_core.plugins.markers import hookspec
from esper_core.plugins.points import PLUGIN_POINTS, PluginPoint

if TYPE_CHECKING:
    import pluggy

    from esper_core.leyline import (
        AdaptationCommand,
        CommandResult,
        FieldReport,
        SeedLifecycleEvent,
        SystemStatePacket,
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


def _provider_hookspec(point: PluginPoint) -> Any:
    """The hookspec of one plugin point, named and documented from its row in the table."""

    def spec(self: object) -> Iterable[Any]:
        yield from ()

    spec.__name__ = point.hook
    spec.__qualname__ = f"ProviderSpecs.{point.hook}"  # pluggy drops ``self`` from methods of a class
    spec.__doc__ = provider_docstring(point)
    return hookspec(spec)


def provider_docstring(point: PluginPoint) -> str:
    """The docstring of a provider hook, in the fixed shape every hookspec's docstring has."""
    spec_name = point.spec_type.__name__
    returns = f":returns: an iterable of :class:`~esper_core.plugins.descriptors.{spec_name}`"
    if point.protocol:
        returns += f"; each factory returns an object satisfying :class:`{point.protocol}`"
    example = textwrap.indent(point.example, "    ")
    return (
        f"{point.summary} {point.choice()[0].upper()}{point.choice()[1:]}.\n\n"
        f"{SEMANTICS_COLLECTED}\n\n{returns}.\n\nCalled by: {point.called_by}\n\nExample::\n\n{example}\n"
    )


#: Provider hooks: each contributes descriptors of one plugin point; the configuration chooses by name. Generated
#: from :data:`esper_core.plugins.points.PLUGIN_POINTS`, so the table is the one place a plugin point is defined.
ProviderSpecs = type(
    "ProviderSpecs",
    (),
    {
        "__doc__": "Provider hooks, one per plugin point (esper_core.plugins.points).",
        "__module__": __name__,
        **{point.hook: _provider_hookspec(point) for point in PLUGIN_POINTS},
    },
)


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
