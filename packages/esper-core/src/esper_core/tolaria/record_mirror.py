"""The run record, mirrored on the bus: with ``tolaria.publish_record``, each record entry goes on Oona's ``record``
stream as a ``RunRecordEntry`` once it is durable on disk, so that a learner on another machine (``esper serve simic``
with ``simic.service.listen``) learns from this run as if it read the run directory.

The bus is a copy, never the record: a publication that fails (the server went away) is logged once and counted,
and the run goes on; whoever reads the mirror sees a gap in the offsets and knows that run is incomplete. Entries are
published at decision points, where the record writes them; nothing here runs per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from esper_core.leyline import RunRecordEntry
from esper_core.oona import Oona

logger = logging.getLogger("esper.tolaria.record")


class RecordMirror:
    """Publishes a run's record entries (``(offset, entry bytes)`` as :class:`RunRecord` wrote them) on the bus."""

    def __init__(self, bus: Oona, training_run_id: str, config_file: Path) -> None:
        self.bus, self.training_run_id, self.config_file = bus, training_run_id, config_file
        self.published = 0
        self.failures = 0

    def __call__(self, written: Sequence[tuple[int, bytes]]) -> None:
        messages = [
            RunRecordEntry(
                version=1,
                training_run_id=self.training_run_id,
                offset=offset,
                entry=entry,
                config_toml=self._config() if offset == 0 else "",
            )
            for offset, entry in written
        ]
        try:
            self.bus.publish_many(messages)
        except Exception as error:  # noqa: BLE001 - a copy on the bus must never stop the training it copies
            self.failures += 1
            if self.failures == 1:
                logger.warning(
                    "run %s: its record could not be mirrored on the bus (%s: %s); the run goes on and its record "
                    "stays complete on disk, but a listener will miss this run",
                    self.training_run_id, type(error).__name__, error,
                )  # fmt: skip
        else:
            self.published += len(messages)

    def _config(self) -> str:
        try:
            return self.config_file.read_text()
        except OSError:
            return ""
