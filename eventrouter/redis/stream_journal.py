"""The failure journal in a capped Redis stream, and the choice between it and the local file.

``XADD KEY MAXLEN size * data <json>``, trimmed exactly: failures are rare, so exact trimming
costs nothing and the cap is the one configured. When this Redis user may not write there
(NOPERM, a read-only replica), the journal lives in the local file instead. While Redis
cannot be reached (at start or later), failures go to the local file and, once it can be
written again, to the stream; reading merges both. Listing pages with exclusive ranges, so
Redis >= 6.2.
"""

from __future__ import annotations

import builtins
import json
import logging
from pathlib import Path

from eventrouter.redis import bus, streams
from eventrouter.runtime.journal import (
    FILE_NAME,
    ID_PATTERN,
    MAX_PAYLOAD,
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

    def __init__(
        self,
        url: str,
        key: str,
        size: int,
        local: FileJournal | None = None,
        payload_limit: int = MAX_PAYLOAD,
    ) -> None:
        self.key, self.size, self.payload_limit = key, size, payload_limit
        self.where = f"Redis stream {key} at {bus.redact(url)}"
        #: Where failures go while Redis cannot be written, and what reading merges in.
        self.local = local
        self._on_local = False
        self._client = bus.client(url, connect_timeout=bus.CONNECT_TIMEOUT, timeout=10)

    async def probe(self) -> None:
        """Check that this user may write the stream; raise streams.StoreError if not."""
        entry_id = await streams.stream_add(self._client, self.key, {"probe": b"1"}, None)
        await streams.stream_delete(self._client, self.key, entry_id)

    async def record(self, failure: Failure) -> str:
        """Append ``failure`` to the stream, else the local file; return its id, "" if lost."""
        entry = bounded(failure, "", self.payload_limit)
        data = json.dumps(entry.to_json(), ensure_ascii=False).encode()
        try:
            entry_id = await streams.stream_add(self._client, self.key, {"data": data}, self.size)
        except streams.StoreError as exc:
            if self.local is None:
                report_lost(failure, self.where, exc)
                return ""
            if not self._on_local:
                self._on_local = True
                log.warning(
                    "cannot write the failure journal to %s (%s); recording failures in the "
                    "%s until it can be written",
                    self.where,
                    exc,
                    self.local.where,
                )
            return await self.local.record(failure)
        if self._on_local:
            self._on_local = False
            log.warning("failure journal: recording in %s again", self.where)
        return entry_id

    async def list(
        self, *, limit: int = 50, route: str | None = None, event: str | None = None
    ) -> builtins.list[Failure]:
        """Return up to ``limit`` failures of the stream and the local file, newest first.

        Raise JournalError when the stream cannot be read: showing only the local file
        would hide what Redis holds.
        """
        found = await self._list_stream(limit, route, event)
        if self.local is not None:
            found.extend(await self.local.list(limit=limit, route=route, event=event))
            found.sort(key=_id_order, reverse=True)
        return found[:limit]

    async def _list_stream(
        self, limit: int, route: str | None, event: str | None
    ) -> builtins.list[Failure]:
        found: builtins.list[Failure] = []
        end = "+"
        while len(found) < limit:
            try:
                page = await streams.stream_range_rev(self._client, self.key, end, _PAGE)
            except streams.StoreError as exc:
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
            entry = await streams.stream_get(self._client, self.key, failure_id)
        except streams.StoreError as exc:
            raise JournalError(f"cannot read {self.where}: {exc}") from exc
        found = self._decode(entry) if entry else None
        if found is None and self.local is not None:
            return await self.local.get(failure_id)
        return found

    def _decode(self, entry: streams.StreamEntry) -> Failure | None:
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


def _id_order(failure: Failure) -> tuple[int, int]:
    found = ID_PATTERN.match(failure.id)
    return (int(found[1]), int(found[2])) if found else (0, 0)


async def open_journal(
    url: str | None, key: str, size: int, state_dir: Path, payload_limit: int = MAX_PAYLOAD
) -> Journal:
    """Open the stream at ``url`` when this user may write it, else the local file (say why).

    A Redis that cannot be reached now may be later: the stream is used then, with the local
    file meanwhile. A refusal (NOPERM, a read-only replica) keeps the journal in the file.
    """
    local = FileJournal(state_dir / FILE_NAME, size, payload_limit)
    if url is None:
        return local
    stream = StreamJournal(url, key, size, local, payload_limit)
    try:
        await stream.probe()
    except streams.StoreError as exc:
        why = f"cannot write the failure journal to {stream.where} ({exc})"
        if exc.unreachable:
            log.warning(
                "%s; recording failures in the %s until it can be written", why, local.where
            )
            stream._on_local = True
            return stream
        await stream.close()
        log.warning("%s; keeping it in the %s instead", why, local.where)
        return local
    return stream


def in_use(journal: Journal) -> str:
    """Return where ``journal`` writes failures now, for the router's start-up line.

    A stream that Redis cannot take yet writes to the local file meanwhile: saying "the
    stream" right after the warning that it is the file would contradict it.
    """
    if isinstance(journal, StreamJournal) and journal._on_local and journal.local is not None:
        return f"{journal.local.where} until {journal.where} can be written"
    return journal.where


def open_reader(url: str | None, key: str, state_dir: Path) -> Journal:
    """Open the journal for reading: the stream at ``url`` merged with the local file.

    No write probe: reading needs no write permission. The size only bounds writes.
    """
    local = FileJournal(state_dir / FILE_NAME, 10_000)
    return local if url is None else StreamJournal(url, key, 10_000, local)
