"""The one validation path of `check`, of `run` at start and of the daemon on SIGHUP."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from eventrouter.analysis.lint import deep_check
from eventrouter.config.loader import LoadResult


def validate(result: LoadResult, events_dirs: Sequence[Path]) -> LoadResult:
    """Return ``result`` with the deep check's findings added when the table loads.

    ``result.ok`` then says whether the routes may run: `check` exits 1, `run` does not
    start and a reload keeps the old table on exactly the same errors.
    """
    if not result.ok:  # the deep check needs a table that loads
        return result
    findings = deep_check(result, list(events_dirs))
    return dataclasses.replace(result, diagnostics=(*result.diagnostics, *findings))
