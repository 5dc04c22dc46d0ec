"""Tamiyo's first-party policies."""
