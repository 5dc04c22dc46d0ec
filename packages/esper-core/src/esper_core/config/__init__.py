"""Run configuration: one TOML file plus ``ESPER_*`` environment and ``--set`` overrides, into frozen attrs sections.

A section is an attrs class marked with :func:`section`; core defines its own (the selectors of plugin points are in
:mod:`esper_core.plugins.selectors`) and plugins contribute theirs (a descriptor's ``options`` class, or the
``esper_core_config_sections`` hook). Every key is validated: an unknown or mistyped key is an error that names it,
says where it came from and how to fix it. Numeric keys use the validators of :mod:`esper_core.config.validators`.
"""

from esper_core.config.convert import section, section_path
from esper_core.config.loader import EsperConfig, load_config

__all__ = ["EsperConfig", "load_config", "section", "section_path"]
