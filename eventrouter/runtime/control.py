"""The control channel's request/response protocol: `status` and `history` asked of routers.

The CLI SUBSCRIBEs to a fresh reply channel, then PUBLISHes on ``QUERY_CHANNEL`` the JSON
object ``{"op": OP, "instance": NAME or "*", "reply": REPLY_CHANNEL, ...}``; each router
named (every router for ``"*"``) PUBLISHes its answer, ``{"instance": NAME, "op": OP, ...}``,
on the reply channel. Anyone who can publish may send a request, so requests are bounded in
size and depth, and the reply channel must be under ``REPLY_PREFIX``: a forged request
cannot make a router publish on an event channel.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

QUERY_CHANNEL = "eventrouter/control/query"
REPLY_PREFIX = "eventrouter/control/reply/"
OPS = ("status", "history")
ALL = "*"
#: Longest request read, in bytes, and deepest nesting accepted.
MESSAGE_MAX = 4096
DEPTH_MAX = 4
#: Longest answer the CLI reads from one router (a full history is well under this).
REPLY_MAX = 16 * 1024 * 1024
#: Most history entries one answer carries.
LIMIT_MAX = 1000
#: How long `--all` collects answers (seconds), and how long one router is waited for.
COLLECT_ALL, WAIT_ONE = 1.0, 2.0
_REPLY = re.compile(re.escape(REPLY_PREFIX) + r"[A-Za-z0-9_-]{1,64}\Z")
_TEXT_MAX = 256


@dataclass(frozen=True)
class Query:
    """A request to the routers named by ``instance`` (``*``: all)."""

    op: str
    instance: str
    reply: str
    route: str | None = None
    event: str | None = None
    limit: int = 20
    verbose: bool = False

    def to_bytes(self) -> bytes:
        """Return the request as published."""
        return json.dumps(asdict(self)).encode()

    def wants(self, instance: str) -> bool:
        """Return True when the router ``instance`` should answer."""
        return self.instance in (ALL, instance)


def reply_channel() -> str:
    """Return a fresh reply channel for one request."""
    return REPLY_PREFIX + os.urandom(16).hex()  # as random as a uuid4, without its import


def depth(value: Any) -> int:
    """Return how deeply ``value`` nests lists and objects (a scalar is 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _loads(data: bytes, limit: int) -> Any:
    """Return the JSON in ``data``; raise ValueError with why it is not acceptable."""
    if len(data) > limit:
        raise ValueError(f"{len(data)} bytes, over the {limit}-byte limit")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError; deep nesting
        raise ValueError("not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _text(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _TEXT_MAX:
        raise ValueError(f"{name} must be a string of 1 to {_TEXT_MAX} characters")
    return value


def parse_query(data: bytes) -> Query:
    """Return the request in ``data``; raise ValueError with why it is ignored."""
    value = _loads(data, MESSAGE_MAX)
    if depth(value) > DEPTH_MAX:
        raise ValueError(f"nested deeper than {DEPTH_MAX}")
    op, reply = value.get("op"), value.get("reply")
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}")
    if not isinstance(reply, str) or not _REPLY.match(reply):
        raise ValueError(f"reply must be a channel {REPLY_PREFIX}<id>")
    limit = value.get("limit", 20)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= LIMIT_MAX:
        raise ValueError(f"limit must be a whole number from 1 to {LIMIT_MAX}")
    return Query(
        op=op,
        instance=_text(value.get("instance"), "instance") or ALL,
        reply=reply,
        route=_text(value.get("route"), "route", optional=True),
        event=_text(value.get("event"), "event", optional=True),
        limit=limit,
        verbose=value.get("verbose") is True,
    )


def answer(instance: str, op: str, body: dict[str, Any]) -> bytes:
    """Return a router's answer to a request."""
    return json.dumps({"instance": instance, "op": op, **body}, default=str).encode()


def parse_answer(data: bytes) -> dict[str, Any] | None:
    """Return a router's answer, or None when it is not one (too large, not JSON)."""
    try:
        value = _loads(data, REPLY_MAX)
    except ValueError:
        return None
    return value if isinstance(value.get("instance"), str) else None
