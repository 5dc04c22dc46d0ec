"""The pluggy markers of the ``esper`` project. Plugins import ``hookimpl`` from :mod:`esper_core`."""

from __future__ import annotations

import pluggy

#: The pluggy project name; equal to the entry-point group plugins register under.
PROJECT_NAME = "esper"
ENTRY_POINT_GROUP = "esper"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
