"""Terminal safety: `failures`, `routes` and `explain` escape control characters from events
and files, so that printing them cannot drive the operator's terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import redis

from tests.routerproc import Router, run_here, write_routes, write_step

HOSTILE = "\x1b]0;owned\x07\x1b[2J\r"


def assert_escaped(text: str) -> None:
    """Fail when ``text`` holds a raw ESC, BEL or CR, or lacks the escaped ESC."""
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text, repr(text)
    assert "\\x1b" in text, text


def test_failures_escapes_channel_and_payload(
    tmp_path: Path, router_factory: Callable[..., Router], redis_url: str, short_tmp: Path
) -> None:
    write_step(tmp_path / "h" / "10", "exit 3")
    routes = write_routes(
        tmp_path / "routes.d",
        "r.yml",
        "routes:\n  - name: fails\n    on: cluster/event/*\n    do: [{run: ../h}]\n",
    ).parent
    router = router_factory("--routes", str(routes), "--state-dir", str(short_tmp))

    channel = "cluster/event/x" + HOSTILE
    redis.Redis.from_url(redis_url).publish(channel, json.dumps({"k": HOSTILE}))
    router.wait_log("failure recorded")

    listed = run_here("failures", "--redis", redis_url, "--state-dir", str(short_tmp))
    assert listed.returncode == 0, listed.stderr
    assert "fails" in listed.stdout
    assert_escaped(listed.stdout)


def test_routes_escapes_patterns_from_route_files(tmp_path: Path) -> None:
    write_step(tmp_path / "h" / "10", "exit 0")
    routes = write_routes(
        tmp_path / "routes.d",
        "r.yml",
        'routes:\n  - name: odd\n    on: "cluster/event/\\e]0;red\\a"\n    do: [{run: ../h}]\n',
    ).parent

    listed = run_here("routes", "--routes", str(routes))

    assert listed.returncode == 0, listed.stderr
    assert "odd" in listed.stdout
    assert_escaped(listed.stdout)


def test_explain_escapes_the_event(tmp_path: Path) -> None:
    write_step(tmp_path / "h" / "10", "exit 0")
    routes = write_routes(
        tmp_path / "routes.d",
        "r.yml",
        "routes:\n  - name: any\n    on: cluster/event/*\n    do: [{run: ../h}]\n",
    ).parent

    explained = run_here(
        "explain", "--routes", str(routes), "cluster/event/x" + HOSTILE, json.dumps({"k": 1})
    )

    assert explained.returncode == 0, explained.stderr
    assert "any" in explained.stdout
    assert_escaped(explained.stdout)
