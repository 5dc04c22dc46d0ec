"""Simic: offline improvement of Tamiyo's learned policy from field reports."""

__version__ = "0.1.0"
