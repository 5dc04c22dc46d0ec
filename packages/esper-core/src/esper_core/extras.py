"""Optional dependencies of esper-core, and the one clear error when a feature needs one that is missing.

esper-core itself installs without PyTorch or redis-py, so that a machine that only runs services, sinks or the
command line stays light. Training (``esper run``, the built-in tasks, Tolaria) needs the ``train`` extra; the
Redis bus backend needs the ``redis`` extra. A feature asks for its module through :func:`require` at the point it
starts, and a user without it gets one line that says what to install instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from esper_core.errors import MissingDependencyError

#: Which extra installs each optional module, and what to say beyond ``pip install``.
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": (
        "train",
        " (install PyTorch first, the build for your machine, e.g. pip install torch; see https://pytorch.org)",
    ),
    "numpy": ("train", ""),
    "redis": ("redis", ""),
}


def install_hint(module: str) -> str:
    """``pip install 'esper-core[EXTRA]'`` for an optional module, with any advice that goes with it."""
    extra, advice = EXTRAS[module]
    return f"pip install 'esper-core[{extra}]'{advice}"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose`` ("esper run", "the Redis bus backend"), or raise
    :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs {module}, which is not installed ({error}). Install it with: {install_hint(module)}"
        ) from error
