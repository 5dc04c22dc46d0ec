"""The registry facade: lookups by name, the errors users see, options from configuration."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from esper_core import hookimpl
from esper_core.config import section
from esper_core.errors import (
    ConfigError,
    PluginConflictError,
    PluginError,
    PluginValidationError,
    UnknownComponentError,
)
from esper_core.plugins import BuildContext, PolicySpec, Registry, TelemetrySinkSpec


def provides(*specs: Any, hook: str = "esper_tamiyo_policies") -> Any:
    return type("Plugin", (), {hook: hookimpl(lambda self: list(specs))})()


def test_names_are_normalized_so_spelling_variants_find_one_component(
    register_plugin: Any, esper_registry: Registry
) -> None:
    spec = PolicySpec(name="Fixed_Schedule", factory=lambda context: None)
    register_plugin(provides(spec))
    assert spec.name == "fixed-schedule"
    assert esper_registry.policy("fixed_schedule") is spec
    assert esper_registry.policy(" FIXED-SCHEDULE ") is spec


@pytest.mark.parametrize("bad", ["", "-leading", "has space", "dotted.name", "ünïcode"])
def test_invalid_component_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid component name"):
        PolicySpec(name=bad, factory=lambda context: None)


def test_an_unknown_name_lists_what_is_installed_and_suggests(register_plugin: Any, esper_registry: Registry) -> None:
    register_plugin(
        provides(
            PolicySpec(name="heuristic", factory=lambda c: None), PolicySpec(name="learned", factory=lambda c: None)
        )
    )
    with pytest.raises(UnknownComponentError) as caught:
        esper_registry.policy("heuristc")
    message = str(caught.value)
    assert "did you mean 'heuristic'" in message
    assert "Available: heuristic, learned." in message and "esper plugins" in message


def test_an_unknown_url_scheme_names_the_schemes_that_exist(esper_registry: Registry) -> None:
    with pytest.raises(UnknownComponentError, match="kafka://") as caught:
        esper_registry.bus_backend("kafka://127.0.0.1:9092")
    assert "Schemes handled: redis, rediss, unix" in str(caught.value)


def test_one_registry_refuses_duplicate_names_from_two_plugins(register_plugin: Any, esper_registry: Registry) -> None:
    register_plugin(provides(PolicySpec(name="twin", factory=lambda c: None)), name="first")
    register_plugin(provides(PolicySpec(name="twin", factory=lambda c: None)), name="second")
    with pytest.raises(PluginConflictError) as caught:
        esper_registry.policies()
    assert "'first'" in str(caught.value) and "'second'" in str(caught.value)


def test_a_hook_yielding_the_wrong_type_is_named(register_plugin: Any, esper_registry: Registry) -> None:
    register_plugin(provides(TelemetrySinkSpec(name="oops", factory=lambda c: None)), name="confused")
    with pytest.raises(PluginValidationError, match=r"confused.*PolicySpec"):
        esper_registry.policies()


def test_a_hook_that_raises_is_reported_with_its_plugin(register_plugin: Any, esper_registry: Registry) -> None:
    class Raises:
        @hookimpl
        def esper_tamiyo_policies(self) -> list[PolicySpec]:
            raise RuntimeError("boom")

    register_plugin(Raises(), name="raiser")
    with pytest.raises(PluginError, match=r"'raiser'.*esper_tamiyo_policies.*boom"):
        esper_registry.policies()


def test_descriptors_are_sorted_by_name(register_plugin: Any, esper_registry: Registry) -> None:
    register_plugin(provides(*(PolicySpec(name=n, factory=lambda c: None) for n in ("zeta", "alpha", "mid"))))
    assert [spec.name for spec in esper_registry.policies()] == ["alpha", "mid", "zeta"]


@section("tamiyo.acme")
@attrs.frozen
class AcmeOptions:
    patience: int = 3
    mode: str = "calm"


def test_a_factory_receives_its_options_from_the_configuration(register_plugin: Any, esper_registry: Registry) -> None:
    seen: list[BuildContext] = []
    spec = PolicySpec(name="acme", factory=lambda context: seen.append(context) or "built", options=AcmeOptions)
    register_plugin(provides(spec))
    assert AcmeOptions in esper_registry.config_sections()
    config = esper_registry.load_config(overrides=["tamiyo.acme.patience=7"], env={})
    assert esper_registry.build(spec, config=config) == "built"
    assert seen[0].options == AcmeOptions(patience=7)
    assert seen[0].registry is esper_registry and seen[0].config is config
    esper_registry.build(spec)
    assert seen[1].options == AcmeOptions()


def test_options_of_an_installed_component_are_validated(register_plugin: Any, esper_registry: Registry) -> None:
    register_plugin(provides(PolicySpec(name="acme", factory=lambda c: None, options=AcmeOptions)))
    with pytest.raises(ConfigError, match=r"tamiyo\.acme\.patience = 'x'"):
        esper_registry.load_config(overrides=["tamiyo.acme.patience=x"], env={})


def test_options_of_a_missing_plugin_are_an_error(esper_registry: Registry) -> None:
    with pytest.raises(ConfigError, match="unknown section tamiyo"):
        esper_registry.load_config(overrides=["tamiyo.acme.patience=3"], env={})


def test_required_distributions_must_be_present(esper_registry: Registry) -> None:
    esper_registry.check_required(["esper-core"])
    with pytest.raises(PluginError, match="esper-nowhere"):
        esper_registry.check_required(["esper-core", "esper-nowhere"])


def test_registering_after_a_lookup_needs_no_stale_cache(register_plugin: Any, esper_registry: Registry) -> None:
    assert esper_registry.policies() == []
    spec = PolicySpec(name="late", factory=lambda c: None)
    register_plugin(provides(spec))  # the fixture invalidates the registry's cache
    assert esper_registry.policies() == [spec]


def test_what_a_plugin_provides_is_listed_by_kind(register_plugin: Any, esper_registry: Registry) -> None:
    plugin = register_plugin(provides(PolicySpec(name="acme", factory=lambda c: None)), name="acme-plugin")
    info = esper_registry.pm.info_for(plugin)
    assert esper_registry.provided_by(info) == ["policy:acme"]
    assert "policy" in esper_registry.components()


# -- pluggy all the way -----------------------------------------------------------------------------------------


def test_provider_hooks_are_called_through_pluggy_so_monitoring_and_tracing_see_them(
    register_plugin: Any, esper_registry: Registry
) -> None:
    register_plugin(provides(PolicySpec(name="watched", factory=lambda c: None)), name="watched-plugin")
    seen: list[tuple[str, list[str]]] = []
    undo = esper_registry.pm.add_hookcall_monitoring(
        lambda hook_name, impls, kwargs: seen.append((hook_name, [impl.plugin_name for impl in impls])),
        lambda outcome, hook_name, impls, kwargs: None,
    )
    try:
        esper_registry.policy("watched")
    finally:
        undo()
    calls = [impls for hook, impls in seen if hook == "esper_tamiyo_policies"]
    assert ["watched-plugin"] in calls, "each plugin's provider hook is one pluggy call of its own"


def test_esper_trace_plugins_logs_provider_hook_calls(register_plugin: Any, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry.create(autoload=False, trace=True)
    registry.pm.register(provides(PolicySpec(name="traced", factory=lambda c: None)), name="traced-plugin")
    with caplog.at_level("DEBUG", logger="esper.plugins"):
        registry.policy("traced")
    assert any("esper_tamiyo_policies" in record.getMessage() for record in caplog.records)


def test_a_hook_wrapper_on_a_provider_hook_is_refused_at_registration_with_a_way_out(
    esper_registry: Registry,
) -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def esper_tamiyo_policies(self) -> Any:
            result = yield
            return result

    with pytest.raises(PluginValidationError) as caught:
        esper_registry.pm.register(Wrapper(), name="wrapper")
    message = str(caught.value)
    assert "'wrapper'" in message and "esper_tamiyo_policies" in message and "ESPER_BLOCKED_PLUGINS" in message
    assert not esper_registry.pm.has_plugin("wrapper"), "a refused plugin is not left half-registered"


def test_hook_wrappers_on_notifications_work(esper_registry: Registry, register_plugin: Any) -> None:
    seen: list[str] = []

    class Around:
        @hookimpl(wrapper=True)
        def esper_tolaria_run_finished(self, run: Any, summary: Any) -> Any:
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    register_plugin(Around(), name="around")
    esper_registry.run_finished(run=None, summary={})  # type: ignore[arg-type]
    assert seen == ["before", "after"]


def test_the_table_of_plugin_points_defines_the_provider_hookspecs() -> None:
    from esper_core.plugins.hookspecs import SEMANTICS_COLLECTED, ProviderSpecs
    from esper_core.plugins.points import PLUGIN_POINTS

    hooks = sorted(name for name in vars(ProviderSpecs) if name.startswith("esper_"))
    assert hooks == sorted(point.hook for point in PLUGIN_POINTS)
    for point in PLUGIN_POINTS:
        doc = getattr(ProviderSpecs, point.hook).__doc__
        assert SEMANTICS_COLLECTED in doc and point.spec_type.__name__ in doc and "Example::" in doc
        if point.config_key:
            assert point.config_key in doc


def test_every_selector_key_in_the_table_is_a_configuration_key(esper_registry: Registry) -> None:
    from esper_core.plugins.points import PLUGIN_POINTS

    values = esper_registry.load_config(env={}).to_dict()
    for point in PLUGIN_POINTS:
        if point.config_key is not None:
            *tables, key = point.config_key.split(".")
            table = values
            for name in tables:
                table = table[name]
            assert key in table, f"{point.kind}: {point.config_key} is not a configuration key"


def test_an_unknown_name_names_the_key_that_chose_it(esper_registry: Registry) -> None:
    with pytest.raises(UnknownComponentError, match=r"telemetry sink named 'nope' \(nissa.sinks\)"):
        esper_registry.telemetry_sink("nope")
