"""The dispatcher without a server: a loop-back publisher stands in for Redis's delivery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.model import Settings
from eventrouter.runtime.dispatch import Dispatcher, Receipt
from eventrouter.runtime.journal import Failure
from eventrouter.runtime.steps import StepRunner
from tests.routerproc import write_step


class LoopBack:
    """Deliver every publish back to the dispatcher, as Redis does for a subscriber."""

    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None
        self.sent: list[tuple[str, bytes]] = []
        self.loop_back = True

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        self.sent.append((channel, data))
        if self.loop_back:
            assert self.dispatcher is not None
            asyncio.get_running_loop().call_soon(self.dispatcher.receive, channel, data)
        if receipt is not None:
            receipt.sent(1)


def make(tmp_path: Path, text: str, **settings: object) -> tuple[Dispatcher, LoopBack]:
    (tmp_path / "r.yml").write_text(text)
    result = load_routes([tmp_path])
    assert result.ok, result.diagnostics
    publisher = LoopBack()
    dispatcher = Dispatcher(
        Settings(**settings),  # type: ignore[arg-type]
        StepRunner(),
        publisher,
        RouteIndex(result.routes),
    )
    publisher.dispatcher = dispatcher
    return dispatcher, publisher


async def settle(dispatcher: Dispatcher) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not dispatcher.busy:
            return


async def test_loop_guard_counts_the_chain_across_round_trips(tmp_path: Path) -> None:
    dispatcher, publisher = make(
        tmp_path,
        "routes:\n  - name: echo\n    on: a/event/x\n    do: [{emit: {channel: a/event/x}}]\n",
        max_depth=3,
    )
    dispatcher.receive("a/event/x", b"{}")
    await settle(dispatcher)
    assert len(publisher.sent) == 3  # depth 1, 2, 3; the 4th is cut
    assert dispatcher.counters["loops_cut"] == 1


async def test_receive_says_whether_a_run_starts_at_once(tmp_path: Path) -> None:
    # The intake lets a run that starts at once go before its next read (bus.Subscriber).
    dispatcher, publisher = make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n",
    )
    assert dispatcher.receive("a/event/x", b"{}") is True  # the lane was idle
    assert dispatcher.receive("a/event/x", b"{}") is False  # queued behind the first
    assert dispatcher.receive("c/event/z", b"{}") is False  # no route
    await settle(dispatcher)
    assert len(publisher.sent) == 2
    assert dispatcher.receive("a/event/x", b"{}") is True  # idle again


async def test_someone_elses_identical_event_starts_a_fresh_chain(tmp_path: Path) -> None:
    dispatcher, publisher = make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n",
    )
    dispatcher.receive("a/event/x", b"{}")
    await settle(dispatcher)
    assert dispatcher.chains.adopt("b/event/y", b"{}") == ()  # consumed on its way back
    assert len(publisher.sent) == 1


async def test_only_derived_events_that_come_back_are_remembered(tmp_path: Path) -> None:
    # A derived event no route of this router takes never comes back from Redis: remembering
    # it (chain, history link) until it does would only fill memory for nothing.
    dispatcher, publisher = make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n"
        "  - name: back\n    on: a/event/z\n    do: [{emit: {channel: a/event/x}}]\n",
    )
    publisher.loop_back = False  # published, never delivered back: what stays remembered
    dispatcher.receive("a/event/x", b'{"n": 1}')
    await settle(dispatcher)
    assert len(dispatcher.chains) == 0
    assert dispatcher.history.events[-1].derived == [
        {"route": "fwd", "channel": "b/event/y", "receivers": 1}
    ]
    dispatcher.receive("a/event/z", b'{"n": 2}')  # its derived event a/event/x routes here
    await settle(dispatcher)
    assert len(dispatcher.chains) == 1
    assert dispatcher.recover({}) == 1  # still handled once should it be lost on the way


async def test_oversize_and_strict_schema_and_key_errors_are_counted(tmp_path: Path) -> None:
    dispatcher, publisher = make(
        tmp_path,
        """
routes:
  - name: strict
    on: cluster/event/module-added
    schema: strict
    do: [{emit: {channel: out/event/ok}}]
  - name: keyed
    on: k/event/x
    key: "{{ payload.missing }}"
    do: [{emit: {channel: out/event/keyed}}]
""",
        max_payload=50,
    )
    dispatcher.receive("cluster/event/module-added", b'{"module": "m"}')  # no "node"
    dispatcher.receive("cluster/event/module-added", b"x" * 51)
    dispatcher.receive("k/event/x", b"{}")
    dispatcher.receive("cluster/event/module-added", b'{"module": "m", "node": 1}')
    await settle(dispatcher)
    assert dispatcher.counters["schema_rejected"] == 1
    assert dispatcher.counters["dropped_oversize"] == 1
    assert dispatcher.counters["key_errors"] == 1
    assert [channel for channel, _ in publisher.sent] == ["out/event/ok"]


class MemoryJournal:
    """Keep recorded failures in a list."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    async def record(self, failure: Failure) -> str:
        self.failures.append(failure)
        return f"{len(self.failures)}-0"


async def test_template_errors_before_and_during_runs_are_journaled(tmp_path: Path) -> None:
    dispatcher, _ = make(
        tmp_path,
        """
routes:
  - name: bad-when
    on: a/event/x
    when: payload.deep.field > 1
    do: [{emit: {channel: out/event/never}}]
  - name: bad-emit
    on: a/event/x
    do: [{emit: {channel: "out/event/{{ payload.missing }}"}}]
""",
    )
    journal = MemoryJournal()
    dispatcher = Dispatcher(
        dispatcher.settings, dispatcher.runner, dispatcher.publisher, dispatcher.index,
        journal=journal,
    )  # fmt: skip
    dispatcher.receive("a/event/x", b'{"n": 1}')
    await settle(dispatcher)
    await asyncio.sleep(0.05)
    by_route = {failure.route: failure for failure in journal.failures}
    assert set(by_route) == {"bad-when", "bad-emit"}
    assert by_route["bad-when"].action == "when"
    assert by_route["bad-when"].status == "template error"
    assert by_route["bad-emit"].action_index == 1
    assert "missing" in by_route["bad-emit"].reason
    assert by_route["bad-emit"].payload == '{"n": 1}'


async def test_emit_rendered_larger_than_max_payload_is_refused_and_journaled(
    tmp_path: Path,
) -> None:
    dispatcher, publisher = make(
        tmp_path,
        """
routes:
  - name: grow
    on: a/event/x
    do:
      - emit: {channel: out/event/big, payload: {text: "{{ payload.s * 40 }}"}}
      - emit: {channel: out/event/after}
  - name: small
    on: a/event/x
    do: [{emit: {channel: out/event/small}}]
""",
        max_payload=200,
    )
    journal = MemoryJournal()
    dispatcher = Dispatcher(
        dispatcher.settings, dispatcher.runner, publisher, dispatcher.index, journal=journal
    )
    publisher.dispatcher = dispatcher
    dispatcher.receive("a/event/x", b'{"s": "abcdefghij"}')  # 400 bytes once rendered
    await settle(dispatcher)
    assert [channel for channel, _ in publisher.sent] == ["out/event/small"]
    [failure] = journal.failures
    assert failure.route == "grow" and failure.status == "too large"
    assert "--max-payload" in failure.reason
    assert dispatcher.counters["emits_refused"] == 1


async def test_payload_that_defeats_the_parser_still_runs_the_events_folder(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    events = tmp_path / "events"
    write_step(events / "deep" / "10save", f"cat > {out}")
    dispatcher, _ = make(tmp_path, "routes: []\n", events_dirs=(events,))
    deep = b"[" * 100_000 + b"]" * 100_000
    dispatcher.receive("m/event/deep", deep)
    await settle(dispatcher)
    assert out.read_bytes() == deep
    assert dispatcher.counters["runs_ok"] == 1


async def test_event_name_too_long_for_a_file_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    dispatcher, _ = make(tmp_path, "routes: []\n", events_dirs=(events,))
    dispatcher.receive("m/event/" + "n" * 300, b"{}")
    await settle(dispatcher)
    assert dispatcher.counters["refused_names"] == 1
    assert any(
        record.levelname == "WARNING" and "refused event name" in record.getMessage()
        for record in caplog.records
    )
