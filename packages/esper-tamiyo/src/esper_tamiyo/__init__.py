"""Tamiyo: the controller of morphogenetic training; policies, risk engine, signed commands and field reports."""

__version__ = "0.1.0"
