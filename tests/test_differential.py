"""`explain` and the daemon give the same answer: the same events through both, compared.

One side is the engine's plan (what `explain` and `eventrouter test` print); the other the
real daemon, in process on an in-memory bus (eventrouter.testing), whose real steps write
markers. The routes that fired, the derived events and the steps that ran must be the same,
for a battery of hand-picked events and for events Hypothesis generates.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from eventrouter.analysis.explain import EventPlan, Explainer
from eventrouter.config.loader import load_routes
from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
from tests.routerproc import write_step

MAX_DEPTH = 3

ROUTES = """
routes:
  - name: keys
    on: t/event/x
    when: payload.keys()
    do: [{run: ../h/keys}]
  - name: value
    on: t/event/x
    when: payload.v
    do: [{run: ../h/value}]
  - name: deep
    on: t/event/x
    when: payload.a.b > 1
    do: [{run: ../h/deep}]
  - name: whole
    on: t/event/*
    when: payload
    do: [{run: ../h/whole}]
  - name: nojson
    on: t/event/x
    when: payload is none
    do: [{run: ../h/nojson}]
  - name: capture
    on: node/{node}/event/cap
    when: match.node != "0"
    do:
      - run: ../h/capture
        env: {NODE: "{{ match.node }}"}
  - name: multi
    on: [m/event/a, "m/event/*", "*/event/a"]
    do: [{run: ../h/multi}]
  - name: envbad
    on: m/event/a
    do:
      - run: ../h/envbad
        env: {X: "{{ payload.missing }}"}
  - name: keyed
    on: m/event/k
    key: "{{ payload.k }}"
    do: [{run: ../h/keyed}]
  - name: fwd
    on: m/event/fwd
    when: payload.stop is not defined
    do:
      - emit:
          channel: "m/event/{{ payload.next | default('a') }}"
          # a payload check cannot read: it cannot tell the condition never stops the loop
          payload: "{{ {'v': payload.v | default(0)} }}"
      - run: ../h/fwd
  - name: ping
    on: p/event/ping
    when: payload.stop is not defined
    do:
      - emit: {channel: p/event/pong, payload: "{{ {} }}"}
      - run: ../h/ping
  - name: pong
    on: p/event/pong
    when: payload.stop is not defined
    do:
      - emit: {channel: p/event/ping, payload: "{{ {'n': 1} }}"}
      - run: ../h/pong
"""
HANDLERS = ["keys", "value", "deep", "whole", "nojson", "capture", "multi", "envbad"]
HANDLERS += ["keyed", "fwd", "ping", "pong"]
CONVENTION = ["a", "x", "k"]  # events folders next to the YAML routes

BATTERY: list[tuple[str, bytes]] = [
    ("t/event/x", b"{}"),
    ("t/event/x", b'{"k": 1}'),
    *(("t/event/x", b'{"v": %s}' % value) for value in (b"{}", b"[]", b"0", b'""', b"null")),
    ("t/event/x", b'{"v": "false"}'),
    ("t/event/x", b'{"a": {"b": 2}}'),
    ("t/event/x", b'{"a": 1}'),
    ("t/event/x", b"[]"),
    ("t/event/x", b"0"),
    ("t/event/x", b'""'),
    ("t/event/x", b"not json"),
    ("t/event/x", b"[" * 100_000 + b"]" * 100_000),
    ("node/7/event/cap", b"{}"),
    ("node/0/event/cap", b"{}"),
    ("m/event/a", b"{}"),
    ("m/event/a", b'{"missing": "here"}'),
    ("m/event/k", b"{}"),
    ("m/event/k", b'{"k": "one"}'),
    ("m/event/fwd", b'{"next": "x", "v": 1}'),
    ("m/event/fwd", b'{"next": "k"}'),
    ("m/event/fwd", b"{}"),
    # A derived event whose name has spaces: the step's mark line has them too.
    ("m/event/fwd", b'{"next": {"b": 0}}'),
    ("m/event/x/../a", b"{}"),
    ("p/event/ping", b"{}"),
]

Seen = tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]
#: The log names the derived event as Python's repr does: in double quotes when it holds a '.
EMITTED = re.compile(r"""route (\S+) emitted ('[^']*'|"[^"]*")""")
# A mark line: the step, then the event (whose name may hold spaces).
STEP_LINE = re.compile(r"(\S+) (.+)")


def build(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Write the routes, handler folders and events folders; return (routes, events, marks)."""
    marks = tmp_path / "marks"
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yml").write_text(ROUTES)
    events = tmp_path / "events"
    folders = [tmp_path / "h" / name for name in HANDLERS] + [events / n for n in CONVENTION]
    for folder in folders:
        label = folder.name if folder.parent.name == "h" else f"events:{folder.name}"
        write_step(
            folder / "10mark",
            f'echo "{label}/10mark $AGENT_EVENT_SOURCE/event/$AGENT_EVENT_NAME" >> {marks}',
        )
    return routes, events, marks


def planned(plan: EventPlan) -> Seen:
    """Return the (step, event channel) and (route, derived channel) pairs of a plan."""
    steps: Counter[tuple[str, str]] = Counter()
    emits: Counter[tuple[str, str]] = Counter()

    def walk(event: EventPlan) -> None:
        for route in event.fired:
            label = f"events:{Path(route.file).name}" if route.convention else route.name
            for action in route.actions:
                if action.skipped or action.error:
                    continue
                if action.kind == "run":
                    steps.update(
                        (f"{label}/{s.name}", event.channel) for s in action.steps if s.runs
                    )
                elif action.cut is None:
                    emits[(route.name, action.channel or "")] += 1
                    if action.cascade is not None:
                        walk(action.cascade)

    walk(plan)
    return steps, emits


class Daemon:
    """The router's side: the real daemon and real steps in process (eventrouter.testing).

    Each event is published, then the router settles: every message handled and every run
    ended, so whatever it would do has been done once ``run`` returns.
    """

    def __init__(self, routes: Path, events: Path, marks: Path) -> None:
        self.marks = marks
        self.loop = asyncio.new_event_loop()
        self.router = Harness(routes, events=[events], runner=StepRunner(), max_depth=MAX_DEPTH)
        self.log = Lines()
        logging.getLogger("eventrouter").addHandler(self.log)
        self.loop.run_until_complete(self.router.start())

    def seen(self, offset: int) -> Seen:
        lines = self.marks.read_text().splitlines() if self.marks.exists() else []
        steps = Counter(tuple(STEP_LINE.fullmatch(line).groups()) for line in lines)  # type: ignore[union-attr]
        found = EMITTED.findall("\n".join(self.log.lines[offset:]))
        emits = Counter((route, ast.literal_eval(channel)) for route, channel in found)
        return steps, emits  # type: ignore[return-value]

    def run(self, channel: str, data: bytes) -> Seen:
        self.marks.unlink(missing_ok=True)
        offset = len(self.log.lines)
        self.loop.run_until_complete(self.router.send(channel, data))
        return self.seen(offset)

    def stop(self) -> int:
        try:
            return self.loop.run_until_complete(self.router.stop())
        finally:
            self.router.close()
            logging.getLogger("eventrouter").removeHandler(self.log)
            self.loop.close()


class Lines(logging.Handler):
    """Keep the router's log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def sides(tmp_path: Path) -> tuple[Explainer, Daemon]:
    routes, events, marks = build(tmp_path)
    result = load_routes([routes])
    assert result.ok, result.diagnostics
    explainer = Explainer(result.routes, [events], MAX_DEPTH)
    return explainer, Daemon(routes, events, marks)


def compare(explainer: Explainer, daemon: Daemon, channel: str, data: bytes) -> None:
    expected = planned(explainer.explain(channel, data))
    got = daemon.run(channel, data)
    shown = f"{channel} {data[:60]!r}"
    assert got[0] == expected[0], f"steps differ for {shown}"
    assert got[1] == expected[1], f"derived events differ for {shown}"


def test_battery_explain_and_daemon_agree(tmp_path: Path) -> None:
    explainer, daemon = sides(tmp_path)
    try:
        fired = 0
        for channel, data in BATTERY:
            compare(explainer, daemon, channel, data)
            fired += bool(explainer.explain(channel, data).fired)
        assert fired > len(BATTERY) // 2  # the battery exercises both sides, not only silence
    finally:
        assert daemon.stop() == 0


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 2),
    st.text("ab", max_size=2),
    st.lists(st.integers(0, 1), max_size=2),
    st.dictionaries(st.just("b"), st.integers(0, 3), max_size=1),
)
PAYLOADS = st.one_of(
    st.dictionaries(st.sampled_from(["v", "a", "k", "next", "missing"]), VALUES, max_size=3).map(
        lambda value: json.dumps(value).encode()
    ),
    VALUES.map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"", b"x", b"[", b"{}}"]),
)
CHANNELS = st.sampled_from(
    ["t/event/x", "t/event/y", "m/event/a", "m/event/k", "m/event/fwd", "node/1/event/cap"]
)


def test_generated_events_explain_and_daemon_agree(tmp_path: Path) -> None:
    explainer, daemon = sides(tmp_path)

    @settings(max_examples=12, deadline=None, database=None)
    @given(CHANNELS, PAYLOADS)
    def agree(channel: str, data: bytes) -> None:
        compare(explainer, daemon, channel, data)

    try:
        agree()
    finally:
        assert daemon.stop() == 0
