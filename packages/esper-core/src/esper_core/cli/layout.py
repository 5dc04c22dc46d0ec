"""Plain-text layout for the ``esper`` command's listings: readable in an 80-column terminal, never broken mid-word.

Names (hooks, plugins, blueprints) are long identifiers that a table squeezed to a narrow terminal splits in the
middle; these helpers wrap at spaces only, and keep each term on its own line when it is too wide to share one.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

#: Never wider than this, even on a wide terminal: long lines are hard to read.
MAX_WIDTH = 100


def terminal_width() -> int:
    """The terminal's width (80 when it cannot be told, e.g. when piped), capped at :data:`MAX_WIDTH`."""
    return min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH)


def wrap(text: str, width: int, indent: str = "", first: str | None = None) -> list[str]:
    """``text`` wrapped to ``width`` at spaces (words longer than a line stay whole), indented by ``indent``."""
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [(indent if first is None else first).rstrip()]


def definitions(rows: Sequence[tuple[str, str]], width: int, indent: int = 2) -> list[str]:
    """``term  definition`` rows with the definitions aligned and wrapped under themselves."""
    if not rows:
        return []
    column = min(max(len(term) for term, _ in rows), width // 3)
    lines: list[str] = []
    pad = " " * (indent + column + 2)
    for term, definition in rows:
        head = " " * indent + term
        if len(term) > column:  # too wide to share a line with its definition
            lines.append(head)
            lines.extend(wrap(definition, width, pad))
        else:
            lines.extend(wrap(definition, width, pad, first=head.ljust(indent + column + 2)))
    return lines
