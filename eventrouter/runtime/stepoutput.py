"""A step's output on its way to the log: lines cut, decoded, escaped, tagged with a level.

``StepProtocol`` is what ``spawn.Child`` pushes a step's output and exit to: each output
stream feeds a ``LineRelay``, which cuts lines (at most ``max_line`` bytes, never inside a
UTF-8 sequence), reads a syslog ``<N>`` priority prefix as sd-daemon does, escapes control
characters and hands each line to the runner; the exit and the end of the output are told
apart, so a step that leaves a background process holding its pipe cannot hang its handler.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

# The step runner's logger: these lines are part of its story (``runtime.steps``).
logger = logging.getLogger("eventrouter.runtime.steps")

#: Syslog priority (``<N>`` prefix) to logging level.
PRIORITY_LEVELS = (
    logging.ERROR,  # 0 emerg
    logging.ERROR,  # 1 alert
    logging.ERROR,  # 2 crit
    logging.ERROR,  # 3 err
    logging.WARNING,  # 4 warning
    logging.INFO,  # 5 notice
    logging.INFO,  # 6 info
    logging.DEBUG,  # 7 debug
)

_PRIORITY = re.compile(rb"<([0-7])>")
# C0 and C1 controls except tab, DEL, and the Unicode line/paragraph separators: any of them
# could forge or garble log lines.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def sanitize(data: bytes) -> str:
    """Decode one output line as UTF-8 and escape control characters (tab kept)."""
    text = data.decode("utf-8", "replace")
    if text.endswith("\r"):
        text = text[:-1]
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _utf8_cut(buf: bytearray, limit: int) -> int:
    """Return a cut point at or just before ``limit`` that does not split a UTF-8 sequence."""
    for cut in range(limit, max(limit - 4, 0), -1):
        if buf[cut] & 0xC0 != 0x80:
            return cut
    return limit


class LineRelay:
    """Split one output stream into lines of at most ``max_line`` bytes and emit each."""

    def __init__(self, emit: Callable[[int, str], None], max_line: int) -> None:
        self._emit = emit
        self._max_line = max_line
        self._buf = bytearray()
        # Level of the line being continued after a cut, so its later pieces keep it.
        self._level: int | None = None

    def feed(self, data: bytes) -> None:
        """Take a chunk of output and emit every complete (or over-long) line in it."""
        buf = self._buf
        buf += data
        while buf:
            end = buf.find(b"\n", 0, self._max_line + 1)
            if end >= 0:
                piece = bytes(buf[:end])
                del buf[: end + 1]
                self._piece(piece, complete=True)
            elif len(buf) > self._max_line:
                cut = _utf8_cut(buf, self._max_line)
                piece = bytes(buf[:cut])
                del buf[:cut]
                self._piece(piece, complete=False)
            else:
                break

    def flush(self) -> None:
        """Emit what is left of an unterminated last line."""
        if self._buf:
            piece = bytes(self._buf)
            self._buf.clear()
            self._piece(piece, complete=True)
        self._level = None

    def _piece(self, piece: bytes, *, complete: bool) -> None:
        level = self._level
        if level is None:
            level = logging.INFO
            match = _PRIORITY.match(piece)
            if match:
                level = PRIORITY_LEVELS[int(match.group(1))]
                piece = piece[match.end() :]
        self._level = None if complete else level
        self._emit(level, sanitize(piece))


class StepProtocol:
    """Relay a step's output and report its exit and the end of its output separately."""

    def __init__(self, relays: dict[int, LineRelay]) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        #: Set with ``exited``, for the runner to await: a cancelled run cancels this one,
        #: and ``exited`` still tells when the stopped step is gone (asyncio.shield's job,
        #: with one loop turn fewer).
        self.exit_seen: asyncio.Future[None] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()
        self._relays = relays
        self._open = set(relays)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """Relay a chunk of stdout or stderr."""
        relay = self._relays.get(fd)
        if relay is not None:
            relay.feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        """Flush a closed output stream; stdin errors mean the step did not read it all."""
        if fd not in self._relays:
            if exc is not None:
                logger.debug("step stdin closed early: %s", exc)
            return
        self._relays[fd].flush()
        self._open.discard(fd)
        if not self._open and not self.output_closed.done():
            self.output_closed.set_result(None)

    def process_exited(self) -> None:
        """Record that the step's main process has exited and been reaped."""
        for future in (self.exited, self.exit_seen):
            if not future.done():
                future.set_result(None)
