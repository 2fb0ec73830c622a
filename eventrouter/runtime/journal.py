"""The failure journal: every failed run, kept for `eventrouter failures` and `retry`.

The record, the ``Journal`` protocol the dispatcher writes to, and the bounded local file of
JSON lines, ``<state dir>/failures.jsonl``; the Redis stream is in ``redis/stream_journal.py``.

Retry protocol: `eventrouter retry ID` PUBLISHes on the control channel the JSON object
``{"id": ID, "instance": INSTANCE}`` (RETRY_MESSAGE_FIELDS); the router named INSTANCE looks
the failure up in its journal and runs the route's current version on that event again.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from eventrouter.support.files import open_nofollow

log = logging.getLogger(__name__)

FILE_NAME = "failures.jsonl"
#: Output lines kept per failure, and the length each is cut to.
TAIL_LINES, MAX_LINE = 20, 1000
#: Payload bytes an entry keeps: 10,000 entries of 1 MiB payloads would be 10 GiB.
MAX_PAYLOAD = 64 * 1024
RETRY_MESSAGE_FIELDS = ("id", "instance")
#: Longest retry request read, in bytes: an id and an instance name need far less.
RETRY_MESSAGE_MAX = 4096
ID_PATTERN = re.compile(r"(\d{1,20})-(\d{1,20})\Z")
# What JSON gives for each annotation of Failure's fields.
_JSON_TYPES: dict[str, Any] = {"str": str, "int": int, "float": (int, float)}
_JSON_TYPES.update({"str | None": (str, type(None)), "tuple[str, ...]": (list, tuple)})


class JournalError(Exception):
    """The journal could not be read."""


@dataclass(frozen=True)
class Failure:
    """One failed run: where it failed, why, and the event, enough to run it again."""

    id: str
    time: float
    started: float
    instance: str
    route: str
    route_file: str
    route_line: int
    action: str
    action_index: int
    step: str | None
    status: str
    reason: str
    channel: str
    payload: str
    payload_b64: str | None
    tail: tuple[str, ...]
    attempts: int = 1
    #: When the payload was cut to MAX_PAYLOAD bytes: its full size; else 0.
    payload_cut: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the failure as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["tail"] = list(self.tail)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        """Return the failure ``to_json`` gave; raise ValueError when ``data`` is not one."""
        values = {}
        for item in dataclasses.fields(cls):
            value = data.get(item.name, item.default)
            if not isinstance(value, _JSON_TYPES[str(item.type)]) or isinstance(value, bool):
                shown = "missing" if value is dataclasses.MISSING else repr(value)
                raise ValueError(f"not a failure record: {item.name!r} is {shown}")
            values[item.name] = value
        values["tail"] = tuple(str(line) for line in values["tail"])
        if values["payload_b64"] is not None:
            base64.b64decode(values["payload_b64"], validate=True)  # binascii.Error: ValueError
        return cls(**values)

    def raw(self) -> bytes:
        """Return the original payload bytes."""
        if self.payload_b64 is not None:
            return base64.b64decode(self.payload_b64)
        return self.payload.encode("utf-8")


def encode_payload(raw: bytes) -> tuple[str, str | None]:
    """Return (payload, payload_b64) for ``raw``: the text, and base64 when it is not UTF-8."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")


def journal_payload(raw: bytes, limit: int = MAX_PAYLOAD) -> tuple[str, str | None, int]:
    """Return (payload, payload_b64, payload_cut) for an entry: at most ``limit`` bytes kept."""
    cut = len(raw) if len(raw) > limit else 0
    payload, payload_b64 = encode_payload(raw[:limit])
    return payload, payload_b64, cut


def retry_message(failure: Failure) -> bytes:
    """Return the control message asking ``failure.instance`` to run the failed route again."""
    return json.dumps({"id": failure.id, "instance": failure.instance}).encode()


def parse_retry_message(data: bytes) -> tuple[str, str] | None:
    """Return (id, instance) from a retry control message, or None when it is malformed."""
    if len(data) > RETRY_MESSAGE_MAX:
        return None  # not parsed at all: anyone may publish on the control channel
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # also UnicodeDecodeError; deep nesting
        return None
    failure_id, instance = (
        value.get(name) if isinstance(value, dict) else None for name in RETRY_MESSAGE_FIELDS
    )
    if isinstance(failure_id, str) and ID_PATTERN.match(failure_id) and isinstance(instance, str):
        return failure_id, instance
    return None


def bounded(failure: Failure, failure_id: str, limit: int = MAX_PAYLOAD) -> Failure:
    """Return ``failure`` under ``failure_id``, its tail and payload (``limit``) cut to bounds."""
    tail = tuple(line[:MAX_LINE] for line in failure.tail[-TAIL_LINES:])
    failure = dataclasses.replace(failure, id=failure_id, tail=tail)
    raw = failure.raw()
    if len(raw) <= limit:
        return failure
    payload, payload_b64, cut = journal_payload(raw, limit)
    return dataclasses.replace(
        failure, payload=payload, payload_b64=payload_b64, payload_cut=failure.payload_cut or cut
    )


def matches(failure: Failure, route: str | None, event: str | None) -> bool:
    if route is not None and not fnmatchcase(failure.route, route):
        return False
    if event is None:
        return True
    name = failure.channel.partition("/event/")[2]
    return fnmatchcase(failure.channel, event) or (bool(name) and fnmatchcase(name, event))


def report_lost(failure: Failure, where: str, exc: BaseException) -> None:
    what = f"route {failure.route} on {failure.channel} ({failure.status})"
    log.error(
        "could not record in the failure journal (%s) the failure of %s: %s", where, what, exc
    )


class Journal(Protocol):
    """Where failures are recorded and looked up."""

    where: str

    async def record(self, failure: Failure) -> str:
        """Store ``failure`` under a new id (its own is ignored); return the id, "" if lost."""

    async def list(
        self, *, limit: int = 50, route: str | None = None, event: str | None = None
    ) -> builtins.list[Failure]:
        """Return up to ``limit`` failures, newest first, filtered by route and event globs."""

    async def get(self, failure_id: str) -> Failure | None:
        """Return the failure ``failure_id``, or None when there is none."""

    async def close(self) -> None:
        """Release the connection."""


class FileJournal:
    """The journal in a local file of JSON lines: past ``2 * size`` lines, the newest ``size``."""

    def __init__(self, path: Path, size: int, payload_limit: int = MAX_PAYLOAD) -> None:
        self.path, self.size, self.payload_limit = path, size, payload_limit
        self.where = f"local file {path}"
        self._lock = asyncio.Lock()
        self._last: tuple[int, int] | None = None  # newest id, once the file was read
        self._lines = 0

    async def record(self, failure: Failure) -> str:
        """Append ``failure`` to the file; return its id, or "" (logged) on error."""
        async with self._lock:
            try:
                return await asyncio.to_thread(self._append, failure)
            except (OSError, ValueError) as exc:
                report_lost(failure, self.where, exc)
                return ""

    async def list(
        self, *, limit: int = 50, route: str | None = None, event: str | None = None
    ) -> builtins.list[Failure]:
        """Return up to ``limit`` failures, newest first, filtered by route and event globs."""
        entries = await self._entries()
        return [item for item in reversed(entries) if matches(item, route, event)][:limit]

    async def get(self, failure_id: str) -> Failure | None:
        """Return the failure ``failure_id``, or None when there is none."""
        return next((item for item in await self._entries() if item.id == failure_id), None)

    async def close(self) -> None:
        """Nothing to release: every write opens and closes the file."""

    async def _entries(self) -> builtins.list[Failure]:
        async with self._lock:
            try:
                return (await asyncio.to_thread(self._read))[0]
            except OSError as exc:
                raise JournalError(f"cannot read {self.where}: {exc}") from exc

    def _read(self) -> tuple[builtins.list[Failure], int]:
        """Return the failures in the file, oldest first, and its number of lines."""
        try:
            fd = open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return [], 0
        with open(fd, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        entries, bad = [], 0
        for line in lines:
            try:
                item = Failure.from_json(json.loads(line))
            except (ValueError, TypeError):
                bad += 1  # e.g. a line cut short by a crash
                continue
            if ID_PATTERN.match(item.id):
                entries.append(item)
        if bad:
            log.warning("skipped %d unreadable line(s) in %s", bad, self.where)
        return entries, len(lines)

    def _append(self, failure: Failure) -> str:
        if self._last is None:
            entries, self._lines = self._read()
            newest = ID_PATTERN.match(entries[-1].id) if entries else None  # appended in id order
            self._last = (int(newest[1]), int(newest[2])) if newest else (0, 0)
        stamp = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (stamp, 0) if stamp > last_ms else (last_ms, last_seq + 1)
        failure_id = "{}-{}".format(*self._last)
        entry = bounded(failure, failure_id, self.payload_limit)
        line = json.dumps(entry.to_json(), ensure_ascii=False)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Never through a symlink: someone who planted one would choose what we append to.
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with open(fd, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self._lines += 1
        if self._lines > 2 * self.size:
            self._compact()
        return failure_id

    def _compact(self) -> None:
        """Keep the newest ``size`` entries, replacing the file atomically."""
        entries = self._read()[0][-self.size :]
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.unlink(missing_ok=True)  # a leftover, or a planted symlink: never written through
        fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.writelines(
                json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in entries
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._lines = len(entries)
