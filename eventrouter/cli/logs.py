"""Log set-up: timestamps on a terminal, ``<N>`` priority prefixes under journald.

Every line goes through ``SafeFormatter``: events are untrusted data, and a channel, payload
or step output that reaches a log line must not forge another line (newlines, CR) or drive
the terminal (ESC, BEL), nor make a line megabytes long. So control characters are escaped
and each argument is bounded here, once, for every call site.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

#: Longest text of one argument in a log line; steps split their output lines at 16 KiB.
MAX_FIELD = 16 * 1024
#: Longest message of one log line.
MAX_MESSAGE = 64 * 1024

#: C0 controls but tab, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROLS = [*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {
    code: {0x0A: "\\n", 0x0D: "\\r"}.get(
        code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )
    for code in _CONTROLS
}


_NEEDS_ESCAPE = re.compile("[" + "".join(re.escape(chr(code)) for code in _CONTROLS) + "]")
#: A text argument this short cannot outgrow MAX_FIELD once escaped (an escape is at most 6
#: characters): the message's own escaping covers it, without wrapping it (the hot path).
_SHORT = MAX_FIELD // 6


def escape(text: str) -> str:
    """Return ``text`` with control characters written as escapes (``\\n``, ``\\x1b``)."""
    # Most lines have none: one scan in C instead of a table lookup per character.
    return text.translate(_ESCAPES) if _NEEDS_ESCAPE.search(text) else text


def shown(text: str, limit: int = MAX_FIELD) -> str:
    """Return ``text`` escaped and bounded (the note gives the length before escaping)."""
    escaped = escape(text[:limit])
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}…[cut: {len(text)} characters]"


class _Field:
    """A log argument shown escaped and bounded, whichever of %s and %r formats it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return shown(str(self.value))

    def __repr__(self) -> str:
        value = self.value
        if isinstance(value, str) and len(value) > MAX_FIELD:
            return f"{repr(value[:MAX_FIELD])[:MAX_FIELD]}…[cut: {len(value)} characters]"
        return shown(repr(value))


def _safe(value: Any) -> Any:
    """Wrap text-like arguments; numbers stay numbers for %d and %.2f."""
    if value is None or isinstance(value, int | float):
        return value
    # A short str needs no wrapper: %s inserts it and %r its repr (controls already escaped),
    # then the whole message is escaped and bounded.
    if type(value) is str and len(value) <= _SHORT:
        return value
    return _Field(value)


def _safe_args(args: Any) -> Any:
    if isinstance(args, Mapping):
        return {key: _safe(value) for key, value in args.items()}
    return tuple(_safe(value) for value in args)


class SafeFormatter(logging.Formatter):
    """Format records with their arguments escaped and bounded, and the message too."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the formatted line, with no control character from the message."""
        # The record's message and arguments are swapped for the safe message while it is
        # formatted, and put back: cheaper than copying the record for every line.
        msg, args = record.msg, record.args
        try:
            if args:
                record.args = _safe_args(args)
            record.msg, record.args = shown(record.getMessage(), MAX_MESSAGE), None
            return super().format(record)
        finally:
            record.msg, record.args = msg, args


class JournalFormatter(SafeFormatter):
    """Prefix each line with its syslog priority, as journald reads from a stream."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``<N>logger: message`` with the record's priority."""
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def setup(level: str = "INFO") -> None:
    """Send log lines to stderr, in the journal's format when ``JOURNAL_STREAM`` is set."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # No format here names the thread, the process or the source line: not looking them up
    # for every record (the logging HOWTO's "Optimization") takes a third off each line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
