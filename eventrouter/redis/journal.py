"""The failure journal in a capped Redis stream, and the choice between it and the local file.

``XADD KEY MAXLEN size * data <json>``, trimmed exactly: failures are rare, so exact trimming
costs nothing and the cap is the one configured. When this Redis user may not write there
(NOPERM, a read-only replica, unreachable at start), the journal lives in the local file
instead. Listing pages with exclusive ranges, so Redis >= 6.2.
"""

from __future__ import annotations

import builtins
import json
import logging
from pathlib import Path

from eventrouter.redis import bus
from eventrouter.runtime.journal import (
    FILE_NAME,
    ID_PATTERN,
    Failure,
    FileJournal,
    Journal,
    JournalError,
    bounded,
    matches,
    report_lost,
)

log = logging.getLogger(__name__)

_PAGE = 200


class StreamJournal:
    """The journal in a capped Redis stream, one entry per failure with a ``data`` field."""

    def __init__(self, url: str, key: str, size: int) -> None:
        self.key, self.size = key, size
        self.where = f"Redis stream {key} at {bus.redact(url)}"
        self._client = bus.client(url, socket_connect_timeout=5, socket_timeout=10)

    async def probe(self) -> None:
        """Check that this user may write the stream; raise bus.StoreError if not."""
        entry_id = await bus.stream_add(self._client, self.key, {"probe": b"1"}, None)
        await bus.stream_delete(self._client, self.key, entry_id)

    async def record(self, failure: Failure) -> str:
        """Append ``failure`` to the stream; return its entry id, or "" (logged) on error."""
        data = json.dumps(bounded(failure, "").to_json(), ensure_ascii=False).encode()
        try:
            return await bus.stream_add(self._client, self.key, {"data": data}, self.size)
        except bus.StoreError as exc:
            report_lost(failure, self.where, exc)
            return ""

    async def list(
        self, *, limit: int = 50, route: str | None = None, event: str | None = None
    ) -> builtins.list[Failure]:
        """Return up to ``limit`` failures, newest first, filtered by route and event globs."""
        found: builtins.list[Failure] = []
        end = "+"
        while len(found) < limit:
            try:
                page = await bus.stream_range_rev(self._client, self.key, end, _PAGE)
            except bus.StoreError as exc:
                raise JournalError(f"cannot read {self.where}: {exc}") from exc
            decoded = (self._decode(entry) for entry in page)
            found.extend(item for item in decoded if item and matches(item, route, event))
            if len(page) < _PAGE:
                break
            end = "(" + page[-1][0]
        return found[:limit]

    async def get(self, failure_id: str) -> Failure | None:
        """Return the failure ``failure_id``, or None when there is none."""
        if not ID_PATTERN.match(failure_id):
            return None
        try:
            entry = await bus.stream_get(self._client, self.key, failure_id)
        except bus.StoreError as exc:
            raise JournalError(f"cannot read {self.where}: {exc}") from exc
        return self._decode(entry) if entry else None

    def _decode(self, entry: bus.StreamEntry) -> Failure | None:
        entry_id, fields = entry
        if "data" not in fields:
            return None  # a write probe, or someone else's entry
        try:
            data = json.loads(fields["data"])
            return Failure.from_json({**data, "id": entry_id})
        except (ValueError, TypeError) as exc:
            log.warning("skipping entry %s of %s: %s", entry_id, self.where, exc)
            return None

    async def close(self) -> None:
        """Close the connection."""
        await bus.close_quietly(self._client)


async def open_journal(url: str | None, key: str, size: int, state_dir: Path) -> Journal:
    """Open the stream at ``url`` when this user may write it, else the local file (say why)."""
    local = FileJournal(state_dir / FILE_NAME, size)
    if url is None:
        return local
    stream = StreamJournal(url, key, size)
    try:
        await stream.probe()
    except bus.StoreError as exc:
        await stream.close()
        why = f"cannot write the failure journal to {stream.where} ({exc})"
        log.warning("%s; keeping it in the %s instead", why, local.where)
        return local
    return stream
