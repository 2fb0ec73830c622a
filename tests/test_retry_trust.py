"""Retry requests and journal entries are untrusted: forged data against the whole router.

In process (eventrouter.testing): the real daemon decides each retry against its current
table; the journal it reads from is seeded with forged entries. `eventrouter retry` over a
real server is tested in tests/test_journal.py and tests/test_failures_e2e.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from eventrouter.runtime.journal import Failure
from eventrouter.testing import Harness
from tests.routerproc import handler, write_routes

CONTROL = "eventrouter/control/retry"


def entry(route: str, channel: str, payload: str = "{}") -> Failure:
    """Return a journal entry as the router writes it, naming what the forger chose."""
    return Failure.from_json(
        {
            "id": "",
            "time": time.time(),
            "started": time.time(),
            "instance": "node1",
            "route": route,
            "route_file": "forged.yml",
            "route_line": 1,
            "action": "run",
            "action_index": 1,
            "step": None,
            "status": "exit status 1",
            "reason": "forged",
            "channel": channel,
            "payload": payload,
            "payload_b64": None,
            "tail": [],
        }
    )


def setup(tmp_path: Path) -> tuple[Path, Path]:
    """Routes with one guarded route, an events folder, and an evil folder outside both."""
    events = tmp_path / "events"
    handler(events / "changed")
    handler(tmp_path / "evil")
    handler(tmp_path / "h")
    write_routes(
        tmp_path / "routes",
        "r.yml",
        "routes:\n  - name: guarded\n    on: m/event/changed\n    when: payload.ok\n"
        "    do: [{run: ../h}]\n",
    )
    return tmp_path / "routes", events


async def test_forged_journal_entries_run_nothing_the_routes_do_not_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes, events = setup(tmp_path)
    async with Harness(routes, events=[events], instance="node1") as router:
        forge = router.journal.add
        refused = [
            forge(entry(f"events:{tmp_path / 'evil'}", "m/event/changed")),
            forge(entry(f"events:{events / 'changed'}", "m/event/other")),
            forge(entry(f"events:{events}/../evil", "m/event/changed")),
            forge(entry("guarded", "m/event/changed", '{"ok": false}')),
            forge(entry("no-such-route", "m/event/changed")),
        ]
        for failure_id in refused:
            await router.retry(failure_id)
        assert caplog.text.count(": refused: ") == len(refused)
        assert router.fake.calls == []
        allowed = forge(entry("guarded", "m/event/changed", '{"ok": true}'))
        await router.retry(allowed)
        assert f"retry {allowed}: running route guarded" in caplog.text
        convention = forge(entry(f"events:{events / 'changed'}", "m/event/changed"))
        await router.retry(convention)
        assert f"retry {convention}: running route events:" in caplog.text
        assert [call.folder for call in router.fake.calls] == [tmp_path / "h", events / "changed"]
    assert "is not an events folder" in caplog.text
    assert "when: payload.ok is false" in caplog.text
    assert "route no-such-route no longer exists" in caplog.text


async def test_malformed_control_messages_are_ignored_with_one_bounded_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes, _ = setup(tmp_path)
    async with Harness(routes, instance="node1") as router:
        router.publish(CONTROL, "not json")
        router.publish(CONTROL, '{"id": "' + "1" * 5_000_000 + '", "instance": "node1"}')
        router.publish(CONTROL, "[" * 100_000 + "]" * 100_000)
        await router.retry("123-0")  # no such failure
        await router.retry("123-0", instance="node2")  # another router's
        assert caplog.text.count("ignored a malformed retry request") == 3
        assert "retry 123-0: no such failure" in caplog.text
        # The router still works after all of them.
        await router.send("m/event/changed", json.dumps({"ok": True}))
        assert [call.name for call in router.fake.calls] == ["h"]
    assert "Traceback" not in caplog.text and "exception" not in caplog.text.lower()
    assert max(len(line) for line in caplog.text.splitlines()) < 1000
