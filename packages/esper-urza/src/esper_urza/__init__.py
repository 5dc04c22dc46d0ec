"""Urza, Karn and Tezzeret: the blueprint catalog, artifact building and the artifact library."""

__version__ = "0.1.0"
