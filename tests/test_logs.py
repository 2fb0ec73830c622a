"""Log lines: event data cannot forge a line, drive the terminal, or make a line huge."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import redis

from eventrouter.cli import logs
from tests.routerproc import Router, write_routes, write_step

FORGED = "cluster/event/x\n2026-01-01 00:00:00,000 ERROR   forged: line\r\x1b[2Kwiped\x07"


def routes_echoing(tmp_path: Path) -> Path:
    """Write a route on every cluster event whose step prints a line (tagged with the channel)."""
    write_step(tmp_path / "h" / "10", "echo step says hello")
    return write_routes(
        tmp_path / "routes.d",
        "r.yml",
        """\
        routes:
          - name: any
            on: cluster/event/*
            do: [{run: ../h}]
        """,
    ).parent


def test_channel_with_newlines_and_escapes_forges_no_line(
    tmp_path: Path, router_factory: Callable[..., Router], redis_url: str
) -> None:
    router = router_factory("--routes", str(routes_echoing(tmp_path)))

    redis.Redis.from_url(redis_url).publish(FORGED, '{"a": "x\\ny"}')

    log = router.wait_log(r"step says hello")
    assert "forged" in log  # the event was logged ...
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())  # ... in one line
    assert "\x1b" not in log and "\x07" not in log and "\r" not in log
    assert r"cluster/event/x\n2026-01-01" in log


def test_two_mib_channel_gives_bounded_log_lines(
    tmp_path: Path, router_factory: Callable[..., Router], redis_url: str
) -> None:
    router = router_factory("--routes", str(routes_echoing(tmp_path)))
    channel = "cluster/event/" + "y" * (2 * 1024 * 1024)

    redis.Redis.from_url(redis_url).publish(channel, "{}")

    # The step may not even start (an event name that long does not fit in its environment):
    # whatever is logged about the event, each line is bounded and says what was cut.
    log = router.wait_log(r"route any: failure recorded|step says hello")
    assert re.search(r"…\[cut: 2097\d{3} characters\]", log)
    assert max(len(line) for line in log.splitlines()) < logs.MAX_MESSAGE + 200


def test_formatter_keeps_numbers_and_bounds_every_argument() -> None:
    formatter = logs.SafeFormatter("%(message)s")
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "%s|%r|%d|%.1f|%s",
        ("a\nb", "c\x1bd", 7, 2.5, "z" * 10**6),
        None,
    )

    text = formatter.format(record)

    assert text.startswith("a\\nb|'c\\x1bd'|7|2.5|zzz")
    assert text.endswith(f"…[cut: {10**6} characters]")
    assert len(text) < logs.MAX_FIELD + 100


def _formatted(msg: str, *args: object) -> tuple[str, logging.LogRecord]:
    record = logging.LogRecord("eventrouter.x", logging.INFO, __file__, 1, msg, args, None)
    return logs.SafeFormatter("%(message)s").format(record), record


def test_the_formatter_escapes_short_and_long_arguments_and_leaves_the_record_alone() -> None:
    # The hot path inserts short text as is and escapes the whole message once: the line must
    # read as the per-argument escaping made it, and the record must come back unchanged.
    evil = "a\nb\x1b[2K\u2028\x85"
    line, record = _formatted("route %s emitted %r (%s)", evil, evil, 3)
    assert line == "route a\\nb\\x1b[2K\\u2028\\x85 emitted 'a\\nb\\x1b[2K\\u2028\\x85' (3)"
    assert record.msg == "route %s emitted %r (%s)" and record.args == (evil, evil, 3)
    long = "\x07" * logs.MAX_FIELD
    line, _ = _formatted("%s|%r", long, long)
    first, second = line.split("|")
    assert first.endswith(f"…[cut: {logs.MAX_FIELD} characters]")
    assert second.endswith(f"…[cut: {len(repr(long))} characters]")  # the repr is what is cut
    assert "\x07" not in line and len(first) < logs.MAX_FIELD + 40
