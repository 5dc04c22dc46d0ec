"""Run configuration: defaults < TOML file < ESPER_* environment < --set, with errors that name key and source."""

# No `from __future__ import annotations`: the section classes below are read with typing.get_type_hints, and
# real annotation objects keep that independent of how pytest imports this module.

import re
from pathlib import Path
from typing import Literal

import attrs
import pytest

from esper_core.config import EsperConfig, load_config, section, section_path
from esper_core.errors import ConfigError


@attrs.frozen
class Inner:
    x: int = 1
    y: str = "why"


@section("demo")
@attrs.frozen
class Demo:
    key: str = "default"
    count: int = 1
    max_items: int = 10
    enabled: bool = False
    tags: list[str] = attrs.field(factory=list)
    sizes: tuple[int, ...] = (1, 2)
    weights: dict[str, float] = attrs.field(factory=dict)
    mode: Literal["fast", "slow"] = "fast"
    ratio: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    inner: Inner = attrs.field(factory=Inner)
    limit: int | None = None
    where: Path = Path("out")


@section("demo.child")
@attrs.frozen
class Child:
    depth: int = 2


@section("demo")
@attrs.frozen
class DemoExtra:
    extra: int = 0


@section("demo")
@attrs.frozen
class DemoClash:
    key: str = "clash"


@section("req")
@attrs.frozen
class Required:
    name: str


@section("window")
@attrs.frozen
class Window:
    """A cross-field check in ``__attrs_post_init__``, as plugins write them (the example plugin's probation)."""

    low: int = 1
    high: int = 3
    max_low: int = 100

    def __attrs_post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be at least low ({self.low})")
        if self.max_low < self.low:
            raise ValueError(f"the bound on low (max_low = {self.max_low}) is below low ({self.low})")


@section("nest")
@attrs.frozen
class Nest:
    window: Window = attrs.field(factory=Window)


SECTIONS = [Demo, Child]


def load(text: str | None = None, *, env: dict[str, str] | None = None, overrides=(), sections=SECTIONS, path=None):
    return load_config(path, sections=sections, env=env or {}, overrides=overrides, text=text)


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load(*args, **kwargs)
    return str(excinfo.value)


# --- sources and precedence ------------------------------------------------------------------------------------


def test_defaults_when_nothing_is_given():
    config = load()
    assert config.get(Demo) == Demo()
    assert config.get(Child) == Child()
    assert config.source_file is None


def test_values_from_a_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[demo]\nkey = "from-file"\ncount = 7\nenabled = true\ntags = ["a", "b"]\nmode = "slow"\n'
        'where = "/data/out"\nweights = {a = 1, b = 0.5}\n[demo.inner]\nx = 3\n[demo.child]\ndepth = 9\n',
        encoding="utf-8",
    )
    config = load_config(path, sections=SECTIONS, env={})
    assert config.source_file == path
    assert config.get(Demo) == Demo(
        key="from-file",
        count=7,
        enabled=True,
        tags=["a", "b"],
        mode="slow",
        where=Path("/data/out"),
        weights={"a": 1.0, "b": 0.5},
        inner=Inner(x=3),
    )
    assert config.get(Child).depth == 9


def test_path_may_be_a_string(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[demo]\ncount = 2\n", encoding="utf-8")
    assert load_config(str(path), sections=SECTIONS, env={}).get(Demo).count == 2


def test_environment_overrides():
    config = load(env={"ESPER_DEMO__KEY": "from-env", "ESPER_DEMO__COUNT": "5", "ESPER_DEMO__CHILD__DEPTH": "4"})
    assert config.get(Demo).key == "from-env"
    assert config.get(Demo).count == 5
    assert config.get(Child).depth == 4


def test_environment_sets_a_nested_attrs_field_and_keeps_the_file_siblings():
    config = load('[demo.inner]\ny = "file"\n', env={"ESPER_DEMO__INNER__X": "42"})
    assert config.get(Demo).inner == Inner(x=42, y="file")


def test_environment_reaches_keys_with_underscores():
    """Only a double underscore separates parts, so MAX_ITEMS is the key max_items."""
    assert load(env={"ESPER_DEMO__MAX_ITEMS": "3"}).get(Demo).max_items == 3


def test_environment_names_are_case_insensitive_after_the_prefix():
    assert load(env={"ESPER_Demo__Key": "mixed"}).get(Demo).key == "mixed"


def test_unrelated_esper_variables_are_ignored():
    """ESPER_LEYLINE_SECRET and friends have no '__', so they are not configuration overrides."""
    config = load(env={"ESPER_LEYLINE_SECRET": "s" * 32, "ESPER_BLOCKED_PLUGINS": "x", "OTHER__THING": "1"})
    assert config.get(Demo) == Demo()


def test_precedence_defaults_file_env_set():
    text = '[demo]\nkey = "file"\ncount = 2\nmode = "slow"\n'
    env = {"ESPER_DEMO__COUNT": "3", "ESPER_DEMO__KEY": "env", "ESPER_DEMO__RATIO": "0.25"}
    config = load(text, env=env, overrides=["demo.key=set"])
    demo = config.get(Demo)
    assert demo.enabled is False  # default only
    assert demo.mode == "slow"  # file beats default
    assert demo.count == 3  # env beats file
    assert demo.ratio == 0.25  # env beats default
    assert demo.key == "set"  # --set beats env and file


def test_later_set_wins():
    assert load(overrides=["demo.count=1", "demo.count=9"]).get(Demo).count == 9


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ("3", "count", 3),
        ("-12", "count", -12),
        ("true", "enabled", True),
        ("false", "enabled", False),
        ('["a", "b"]', "tags", ["a", "b"]),
        ("[]", "tags", []),
        ("hello world", "key", "hello world"),
        ('"quoted"', "key", "quoted"),
        ('"123"', "key", "123"),
        ("123", "key", "123"),
        ("true", "key", "true"),
        ("0.75", "ratio", 0.75),
        ("1", "ratio", 1.0),
        ("[4, 5]", "sizes", (4, 5)),
        ("/tmp/x y", "where", Path("/tmp/x y")),
        ("7", "limit", 7),
    ],
)
def test_override_values_are_read_as_toml_else_as_strings(raw, field, expected):
    env_name = f"ESPER_DEMO__{field.upper()}"
    from_env = getattr(load(env={env_name: raw}).get(Demo), field)
    from_set = getattr(load(overrides=[f"demo.{field}={raw}"]).get(Demo), field)
    assert from_env == expected
    assert from_set == expected
    assert type(from_env) is type(expected)


def test_set_reaches_nested_fields_and_subsections():
    config = load(overrides=["demo.inner.y=set", "demo.child.depth=11"])
    assert config.get(Demo).inner.y == "set"
    assert config.get(Child).depth == 11


def test_set_value_may_contain_equals_signs():
    assert load(overrides=["demo.key=a=b"]).get(Demo).key == "a=b"


# --- unknown names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"text": '[demo]\nkee = "x"\n'}, "from <text>"),
        ({"overrides": ["demo.kee=x"]}, "from --set demo.kee=x"),
    ],
)
def test_unknown_key_names_key_source_and_suggestion(kwargs, source):
    message = config_error(**kwargs)
    assert "demo.kee" in message
    assert source in message
    assert "did you mean 'key'?" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[demo]\ncuont = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"demo.cuont (from {path})")) as excinfo:
        load_config(path, sections=SECTIONS, env={})
    assert "did you mean 'count'?" in str(excinfo.value)


def test_unknown_key_in_a_nested_table():
    message = config_error("[demo.inner]\nz = 3\n")
    assert "demo.inner.z" in message and "from <text>" in message


def test_unknown_section():
    message = config_error('[dmeo]\nkey = "x"\n')
    assert "unknown section dmeo" in message
    assert "did you mean 'demo'?" in message


@pytest.mark.parametrize(
    "name", ["ESPER_DEMO__NOPE", "ESPER_DEMO__INNER__Z", "ESPER_NOWHERE__KEY", "ESPER_DEMO__KEY__X"]
)
def test_environment_variable_naming_nothing_is_an_error(name):
    message = config_error(env={name: "1"})
    assert name in message
    assert "names no configuration key" in message


def test_environment_error_suggests_the_close_variable():
    assert "did you mean 'ESPER_DEMO__COUNT'?" in config_error(env={"ESPER_DEMO__CUONT": "1"})


# --- type errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('count = "three"', "demo.count", "an integer"),
        ("count = 1.5", "demo.count", "an integer"),
        ("count = true", "demo.count", "an integer"),
        ("enabled = 1", "demo.enabled", "true or false"),
        ('enabled = "yes"', "demo.enabled", "true or false"),
        ('mode = "medium"', "demo.mode", "one of 'fast', 'slow'"),
        ('tags = ["a", 2]', "demo.tags[1]", "a string"),
        ('tags = "a"', "demo.tags", "a list"),
        ("key = 5", "demo.key", "a string"),
        ("ratio = true", "demo.ratio", "a number"),
        ("inner = 3", "demo.inner", "a table"),
        ('weights = {a = "x"}', "demo.weights.a", "a number"),
    ],
)
def test_type_errors_name_the_key_and_the_source(toml, key, expected):
    message = config_error(f"[demo]\n{toml}\n")
    assert message.startswith(f"{key} = ")
    assert "(from <text>)" in message
    assert f"expected {expected}" in message


def test_literal_error_suggests_the_close_choice():
    assert "did you mean 'slow'?" in config_error('[demo]\nmode = "slwo"\n')


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"ESPER_DEMO__COUNT": "abc"}, "demo.count"),
        ({"ESPER_DEMO__TAGS": "notalist"}, "demo.tags"),
        ({"ESPER_DEMO__INNER__X": "s"}, "demo.inner.x"),
        ({"ESPER_DEMO__MODE": "medium"}, "demo.mode"),
    ],
)
def test_type_error_from_the_environment_names_the_variable(env, key):
    message = config_error(env=env)
    assert key in message
    assert f"from environment variable {next(iter(env))}" in message


def test_type_error_from_set_names_the_override():
    message = config_error(overrides=["demo.enabled=maybe"])
    assert "demo.enabled" in message and "from --set demo.enabled=maybe" in message


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"text": "[demo]\nratio = 2.0\n"}, "from <text>"),
        ({"env": {"ESPER_DEMO__RATIO": "-1"}}, "from environment variable ESPER_DEMO__RATIO"),
    ],
)
def test_validator_failure_names_the_key_and_the_source(kwargs, source):
    message = config_error(**kwargs)
    assert "demo." in message and "ratio" in message
    assert source in message


# --- cross-field checks: each key the message names, with its own source ---------------------------------------


def cross_field_error(**kwargs) -> str:
    return config_error(sections=[Window], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "low_source"),
    [
        ({"text": "[window]\nlow = 5\n"}, "from <text>"),
        ({"env": {"ESPER_WINDOW__LOW": "5"}}, "from environment variable ESPER_WINDOW__LOW"),
        ({"overrides": ["window.low=5"]}, "from --set window.low=5"),
    ],
)
def test_cross_field_error_names_the_source_of_each_key(kwargs, low_source):
    """The user set low; the error must not blame the default high it conflicts with as the only source."""
    message = cross_field_error(**kwargs)
    assert message == f"window.high (3) must be at least low (5) (window.high: default; window.low: {low_source})"


def test_cross_field_error_from_a_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[window]\nhigh = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, sections=[Window], env={}, overrides=["window.low=4"])
    assert str(excinfo.value).endswith(f"(window.high: from {path}; window.low: from --set window.low=4)")


def test_cross_field_error_with_both_keys_from_the_environment():
    message = cross_field_error(env={"ESPER_WINDOW__LOW": "5", "ESPER_WINDOW__HIGH": "2"})
    assert "window.high: from environment variable ESPER_WINDOW__HIGH" in message
    assert "window.low: from environment variable ESPER_WINDOW__LOW" in message
    assert "default" not in message


def test_cross_field_error_that_does_not_start_with_a_key_still_names_the_sources():
    message = cross_field_error(text="[window]\nhigh = 200\nlow = 150\n")
    assert message == (
        "[window]: the bound on low (max_low = 100) is below low (150) "
        "(window.low: from <text>; window.max_low: default)"
    )


def test_cross_field_error_inside_a_nested_table_names_the_full_keys():
    message = config_error(sections=[Nest], text="[nest.window]\nhigh = 0\n", env={"ESPER_NEST__WINDOW__LOW": "2"})
    assert message == (
        "nest.window.high (0) must be at least low (2) "
        "(nest.window.high: from <text>; nest.window.low: from environment variable ESPER_NEST__WINDOW__LOW)"
    )


def test_a_key_named_inside_another_is_not_mistaken_for_it():
    """low is a word of max_low's name but not the key max_low: only whole names count."""
    message = cross_field_error(overrides=["window.max_low=0"])
    assert message.endswith("(window.low: default; window.max_low: from --set window.max_low=0)")


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required key req\.name"):
        load(sections=[Required])
    assert load('[req]\nname = "x"\n', sections=[Required]).get(Required).name == "x"


# --- the schema ------------------------------------------------------------------------------------------------


def test_two_classes_at_one_path_share_the_table():
    config = load('[demo]\nkey = "k"\nextra = 3\n', sections=[Demo, DemoExtra], env={"ESPER_DEMO__EXTRA": "4"})
    assert config.get(Demo).key == "k"
    assert config.get(DemoExtra).extra == 4
    assert set(config.section_classes()) == {Demo, DemoExtra}


def test_same_key_from_two_classes_is_an_error_naming_both():
    message = config_error(sections=[Demo, DemoClash])
    assert "demo.key" in message
    assert re.search(r"\.Demo and .*\.DemoClash", message)


def test_a_key_that_is_also_a_section_is_an_error():
    @section("demo.inner")
    @attrs.frozen
    class Shadow:
        x: int = 0

    assert "demo.inner" in config_error(sections=[Demo, Shadow])


def test_listing_a_class_twice_is_harmless():
    assert load(sections=[Demo, Demo, Child]).get(Demo) == Demo()


def test_get_of_a_class_outside_the_schema():
    with pytest.raises(KeyError, match="DemoExtra"):
        load().get(DemoExtra)


def test_section_decorator_requires_attrs():
    with pytest.raises(TypeError, match="attrs"):
        section("plain")(type("Plain", (), {}))
    with pytest.raises(TypeError):
        section_path(Inner)
    assert section_path(Child) == "demo.child"


# --- files -----------------------------------------------------------------------------------------------------


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[demo\nkey = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(path))) as excinfo:
        load_config(path, sections=SECTIONS, env={})
    assert "not valid TOML" in str(excinfo.value)


def test_text_with_a_path_names_the_path_in_messages():
    with pytest.raises(ConfigError, match=re.escape("demo.kee (from virtual.toml)")):
        load_config("virtual.toml", sections=SECTIONS, env={}, text="[demo]\nkee = 1\n")
    config = load_config("virtual.toml", sections=SECTIONS, env={}, text="[demo]\ncount = 4\n")
    assert config.get(Demo).count == 4
    assert config.source_file == Path("virtual.toml")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(f"configuration file {path} does not exist")):
        load_config(path, sections=SECTIONS, env={})


def test_to_toml_loads_back_to_an_equal_configuration(tmp_path):
    config = load(
        '[demo]\nkey = "k"\nlimit = 3\ntags = ["q", "r"]\nsizes = [5]\nweights = {w = 0.5}\nwhere = "/x/y"\n'
        "[demo.inner]\nx = 9\n[demo.child]\ndepth = 4\n",
        sections=[Demo, DemoExtra, Child],
        env={"ESPER_DEMO__EXTRA": "8"},
    )
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    again = load_config(path, sections=[Demo, DemoExtra, Child], env={})
    assert isinstance(again, EsperConfig)
    for cls in (Demo, DemoExtra, Child):
        assert again.get(cls) == config.get(cls)
    assert again.to_toml() == config.to_toml()


def test_to_toml_of_defaults_round_trips():
    config = load()
    assert "limit" not in config.to_toml(), "None has no TOML spelling; it is left out"
    again = load(config.to_toml())
    assert again.get(Demo) == Demo() and again.get(Child) == Child()


@pytest.mark.parametrize("override", ["demo.key", "", "=3", "  =3"])
def test_set_without_key_value_is_an_error(override):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load(overrides=[override])
