"""Plugin discovery through real entry points: committed fake ``*.dist-info`` directories put on ``sys.path``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esper_core.errors import PluginConflictError, PluginError, PluginLoadError, PluginValidationError
from esper_core.plugins import Registry, create_plugin_manager

FIXTURES = Path(__file__).parent / "fixtures" / "plugins"


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Put fake distributions on the path for one test; forget their modules afterwards."""
    before = set(sys.modules)

    def add(*names: str) -> None:
        for name in names:
            monkeypatch.syspath_prepend(str(FIXTURES / name))

    yield add
    for module in set(sys.modules) - before:
        if module.split(".")[0].endswith("_esper_plugin"):
            del sys.modules[module]


def names(registry: Registry) -> list[str]:
    return [info.name for info in registry.pm.plugin_infos()]


def test_an_installed_plugin_is_discovered_with_its_distribution(install: Callable[..., None]) -> None:
    install("good")
    registry = Registry(create_plugin_manager(env={}))
    assert "fake" in names(registry)
    info = next(info for info in registry.pm.plugin_infos() if info.name == "fake")
    assert (info.distribution, info.version, info.target) == ("fake-esper-plugin", "0.1", "fake_esper_plugin")
    spec = registry.policy("fake-wait")
    assert registry.provider_of(spec).distribution == "fake-esper-plugin"


def test_autoload_can_be_disabled(install: Callable[..., None]) -> None:
    install("good")
    assert names(Registry(create_plugin_manager(env={"ESPER_DISABLE_PLUGIN_AUTOLOAD": "1"}))) == ["core"]
    assert names(Registry(create_plugin_manager(autoload=False, env={}))) == ["core"]


@pytest.mark.parametrize("blocked", ["fake", "fake-esper-plugin", "FAKE_ESPER_PLUGIN"])
def test_plugins_are_blocked_by_entry_point_or_distribution_name(install: Callable[..., None], blocked: str) -> None:
    install("good")
    assert "fake" not in names(Registry(create_plugin_manager(env={"ESPER_BLOCKED_PLUGINS": blocked})))
    assert "fake" not in names(Registry(create_plugin_manager(blocked=[blocked], env={})))


def test_the_core_plugin_cannot_be_blocked() -> None:
    with pytest.raises(PluginError, match="essential"):
        create_plugin_manager(blocked=["core"], env={})


def test_only_named_plugins_are_loaded(install: Callable[..., None]) -> None:
    install("good", "conflict")
    registry = Registry(create_plugin_manager(env={"ESPER_PLUGINS": "conflicting-esper-plugin"}))
    assert names(registry) == ["conflicting", "core"]


def test_a_plugin_that_fails_to_import_is_fatal_and_named(install: Callable[..., None]) -> None:
    install("good", "broken")
    with pytest.raises(PluginLoadError) as caught:
        create_plugin_manager(env={})
    message = str(caught.value)
    assert "'broken-esper-plugin'" in message and "'broken'" in message and "esper_missing_dependency" in message
    assert "ESPER_BLOCKED_PLUGINS=broken" in message


def test_a_failing_plugin_can_be_downgraded_to_a_warning(install: Callable[..., None]) -> None:
    install("good", "broken")
    with pytest.warns(RuntimeWarning, match="broken-esper-plugin"):
        pm = create_plugin_manager(env={"ESPER_PLUGIN_ERRORS": "warn"})
    assert "fake" in names(Registry(pm)) and "broken" not in names(Registry(pm))


def test_an_unknown_error_mode_is_refused() -> None:
    with pytest.raises(PluginError, match="ESPER_PLUGIN_ERRORS"):
        create_plugin_manager(env={"ESPER_PLUGIN_ERRORS": "ignore"})


def test_two_distributions_providing_one_component_name_conflict(install: Callable[..., None]) -> None:
    install("good", "conflict")
    registry = Registry(create_plugin_manager(env={}))
    with pytest.raises(PluginConflictError) as caught:
        registry.policies()
    assert "'fake-esper-plugin'" in str(caught.value) and "'conflicting-esper-plugin'" in str(caught.value)
    assert "'fake-wait'" in str(caught.value)


def test_two_distributions_using_one_entry_point_name_conflict(install: Callable[..., None]) -> None:
    install("good", "samename")
    with pytest.raises(PluginConflictError) as caught:
        create_plugin_manager(env={})
    assert "fake-esper-plugin" in str(caught.value) and "samename-esper-plugin" in str(caught.value)


def test_a_misspelled_hook_is_an_error_naming_the_distribution(install: Callable[..., None]) -> None:
    install("badhook")
    with pytest.raises(PluginValidationError) as caught:
        create_plugin_manager(env={})
    assert "badhook-esper-plugin" in str(caught.value) and "esper_tamiyo_policys" in str(caught.value)
