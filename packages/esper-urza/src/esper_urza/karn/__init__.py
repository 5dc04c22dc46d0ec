"""Karn, Esper's default blueprint catalog: genuinely different seed modules for conv2d, vector and sequence slots.

Importing this package imports no torch; building a module does.
"""

from esper_urza.karn.catalog import KarnCatalog
from esper_urza.karn.table import Blueprint, default_blueprints

__all__ = ["Blueprint", "KarnCatalog", "default_blueprints"]
