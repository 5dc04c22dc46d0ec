"""Reading the IDX files Fashion-MNIST (and MNIST) are distributed in, gzip-compressed or not.

Every way a file can be bad (missing, unreadable, not gzip after all, not IDX, cut short in its header or its data)
is an :class:`IdxError` naming the file, never a ``struct``, ``zlib`` or numpy error from deep inside the reader.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from esper_core.errors import TaskDataError

_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(TaskDataError, ValueError):
    """An IDX file is missing, truncated or not an IDX file."""


def read_idx(path: Path) -> NDArray[np.generic]:
    """The array stored in an IDX file (``.gz`` files are decompressed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IdxError(f"{path} does not exist") from None
    except OSError as error:
        raise IdxError(f"{path} cannot be read: {error.strerror or error}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:  # not gzip, or cut short: BadGzipFile, EOFError, zlib.error
            raise IdxError(f"{path} is not a complete gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise IdxError(f"{path} is not an IDX file (bad magic number)")
    dimensions = raw[3]
    header = 4 + 4 * dimensions
    if len(raw) < header:
        raise IdxError(
            f"{path} is cut short: its header declares {dimensions} dimensions ({header} bytes), the file has "
            f"{len(raw)} bytes"
        )
    shape = struct.unpack(f">{dimensions}I", raw[4:header])
    dtype = _TYPES[raw[2]]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxError(f"{path} holds {len(raw) - header} bytes of data; its header promises {expected} for {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
