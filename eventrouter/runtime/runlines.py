"""A run's closing log line, held until Redis has taken the events the run emitted.

An emit is logged as "emitted" when Redis answers for it (the outbox sends it a moment after
the action), while the run's own actions end at once: logged as they happen, a run's
"run ok" line would come before its "emitted" line. So the closing line of a run with emits
still in the outbox waits for their receipts (sent or refused), then follows them.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("eventrouter.runtime.dispatch")


class RunLines:
    """Count each run's emits not yet answered; log its closing line after the last one."""

    def __init__(self) -> None:
        # id(job) -> [emits waiting, the closing line once the run ended]. A job is kept
        # alive by the receipts of its emits, so its id stays its own while it is here.
        self._runs: dict[int, list[Any]] = {}

    def emitting(self, job: object) -> None:
        """Count one more emit of ``job`` handed to the publisher."""
        self._runs.setdefault(id(job), [0, None])[0] += 1

    def answered(self, job: object) -> None:
        """Count one emit of ``job`` answered; log its closing line if it was the last."""
        held = self._runs.get(id(job))
        if held is None:
            return
        held[0] -= 1
        if held[0] <= 0:
            del self._runs[id(job)]
            if held[1] is not None:
                log.info(*held[1])

    def ended(self, job: object, message: str, *args: object) -> None:
        """Log the closing line of ``job`` now, or once its emits are answered."""
        held = self._runs.get(id(job))
        if held is None or held[0] <= 0:
            self._runs.pop(id(job), None)
            log.info(message, *args)
        else:
            held[1] = (message, *args)

    def flush(self) -> None:
        """Log every closing line still held (the router stops; the outbox may never send)."""
        runs, self._runs = self._runs, {}
        for _, line in runs.values():
            if line is not None:
                log.info(*line)
