"""Kasmina: seed slots in any PyTorch host, the seed lifecycle with gates G0-G5, gradient isolation and alpha
blending."""

__version__ = "0.1.0"
