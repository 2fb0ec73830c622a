"""The dispatcher without a server: the in-memory bus (eventrouter.testing) brings derived
events back, as Redis does for a subscriber."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrouter.testing import Harness
from tests.routerproc import handler, write_routes


def make(tmp_path: Path, text: str, **settings: object) -> Harness:
    """Return a harness (not started) on the route file ``text``."""
    write_routes(tmp_path / "routes", "r.yml", text)
    events = settings.pop("events_dirs", ())
    return Harness(tmp_path / "routes", events=events, **settings)


def sent(router: Harness) -> list[tuple[str, bytes]]:
    """Return what the router published (the bus also carries what the test published)."""
    return router.bus.published[len(router.bus.published) - router.parts.publisher.sent :]


async def test_loop_guard_counts_the_chain_across_round_trips(tmp_path: Path) -> None:
    async with make(
        tmp_path,
        "routes:\n  - name: echo\n    on: a/event/x\n    when: payload.stop is not defined\n"
        # A payload check cannot read (a template), so that check leaves the cycle to the guard
        '    do: [{emit: {channel: a/event/x, payload: "{{ {} }}"}}]\n',
        max_depth=3,
    ) as router:
        await router.send("a/event/x", b"{}")
        assert len(sent(router)) == 3  # depth 1, 2, 3; the 4th is cut
        assert router.dispatcher.counters["loops_cut"] == 1


async def test_receive_says_whether_a_run_starts_at_once(tmp_path: Path) -> None:
    # The intake lets a run that starts at once go before its next read (intake.Subscriber).
    async with make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n",
    ) as router:
        dispatcher = router.dispatcher
        assert dispatcher.receive("a/event/x", b"{}") is True  # the lane was idle
        assert dispatcher.receive("a/event/x", b"{}") is False  # queued behind the first
        assert dispatcher.receive("c/event/z", b"{}") is False  # no route
        await router.settle()
        assert len(sent(router)) == 2
        assert dispatcher.receive("a/event/x", b"{}") is True  # idle again


async def test_someone_elses_identical_event_starts_a_fresh_chain(tmp_path: Path) -> None:
    async with make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n"
        "  - name: listens\n    on: b/event/y\n    when: payload.never is defined\n"
        "    do: [{emit: {channel: c/event/z}}]\n",
    ) as router:
        await router.send("a/event/x", b"{}")
        assert router.dispatcher.chains.adopt("b/event/y", b"{}") == ()  # consumed coming back
        assert len(sent(router)) == 1


async def test_only_derived_events_that_come_back_are_remembered(tmp_path: Path) -> None:
    # A derived event no route of this router takes never comes back from Redis: remembering
    # it (chain, history link) until it does would only fill memory for nothing.
    async with make(
        tmp_path,
        "routes:\n  - name: fwd\n    on: a/event/x\n    do: [{emit: {channel: b/event/y}}]\n"
        "  - name: back\n    on: a/event/z\n    do: [{emit: {channel: a/event/x}}]\n",
    ) as router:
        await router.send("a/event/x", b'{"n": 1}')  # b/event/y: nothing here subscribes
        assert len(router.dispatcher.chains) == 0
        [derived] = router.dispatcher.history.events[-1].derived
        assert (derived["route"], derived["channel"]) == ("fwd", "b/event/y")
        assert router.dispatcher.comes_back("a/event/x") is True
        assert router.dispatcher.comes_back("b/event/y") is False


async def test_oversize_and_strict_schema_and_key_errors_are_counted(tmp_path: Path) -> None:
    async with make(
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
    ) as router:
        router.publish("cluster/event/module-added", b'{"module": "m"}')  # no "node"
        router.publish("cluster/event/module-added", b"x" * 51)
        router.publish("k/event/x", b"{}")
        router.publish("cluster/event/module-added", b'{"module": "m", "node": 1}')
        await router.settle()
        counters = router.dispatcher.counters
        assert counters["schema_rejected"] == 1
        assert counters["dropped_oversize"] == 1
        assert counters["key_errors"] == 1
        assert [channel for channel, _ in sent(router)] == ["out/event/ok"]


async def test_template_errors_before_and_during_runs_are_journaled(tmp_path: Path) -> None:
    async with make(
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
    ) as router:
        await router.send("a/event/x", b'{"n": 1}')  # settled: the journal writes too
    by_route = {failure.route: failure for failure in router.journal.failures}
    assert set(by_route) == {"bad-when", "bad-emit"}
    assert by_route["bad-when"].action == "when"
    assert by_route["bad-when"].status == "template error"
    assert by_route["bad-emit"].action_index == 1
    assert "missing" in by_route["bad-emit"].reason
    assert by_route["bad-emit"].payload == '{"n": 1}'


async def test_emit_rendered_larger_than_max_payload_is_refused_and_journaled(
    tmp_path: Path,
) -> None:
    async with make(
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
    ) as router:
        await router.send("a/event/x", b'{"s": "abcdefghij"}')  # 400 bytes once rendered
        assert [channel for channel, _ in sent(router)] == ["out/event/small"]
        assert router.dispatcher.counters["emits_refused"] == 1
    [failure] = router.journal.failures
    assert failure.route == "grow" and failure.status == "too large"
    assert "--max-payload" in failure.reason


async def test_payload_that_defeats_the_parser_still_runs_the_events_folder(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    handler(events / "deep")
    deep = b"[" * 100_000 + b"]" * 100_000
    async with make(tmp_path, "routes: []\n", events_dirs=(events,)) as router:
        await router.send("m/event/deep", deep)
        assert [call.payload for call in router.fake.runs("deep")] == [deep]
        assert router.dispatcher.counters["runs_ok"] == 1


async def test_event_name_too_long_for_a_file_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    async with make(tmp_path, "routes: []\n", events_dirs=(events,)) as router:
        await router.send("m/event/" + "n" * 300, b"{}")
        assert router.dispatcher.counters["refused_names"] == 1
    assert any(
        record.levelname == "WARNING" and "refused event name" in record.getMessage()
        for record in caplog.records
    )
