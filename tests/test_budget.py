"""Template budgets: a runaway render is aborted in time, huge values are refused up front."""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from eventrouter.config.budget import WATCHDOG
from eventrouter.config.templates import Condition, Text, event_context, set_timeout
from eventrouter.config.valuetemplates import Value
from eventrouter.engine.events import parse_event
from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event
from eventrouter.testing import Harness
from tests.routerproc import REPO, Router, clean_env, write_routes, write_step

#: ``when:`` nesting a loop over the payload list in a loop over it: quadratic, C ops each small.
QUADRATIC = "payload.l | select('in', payload.l) | list | length > 0"
BIG_LIST = list(range(100_000))  # about 0.6 MB of JSON, well under --max-payload


@pytest.fixture
def budget() -> Iterator[None]:
    """Restore the default time budget after a test changes it."""
    before = WATCHDOG.timeout
    yield
    set_timeout(before)


def context(payload: Any) -> dict[str, Any]:
    """Return the template context of an event carrying ``payload``."""
    event = Event("cluster/event/x", json.dumps(payload).encode(), payload, is_json=True)
    return event_context(event, route="r")


# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Condition(QUADRATIC).evaluate,
        lambda: (
            Text("{% for a in payload.l %}{% for b in payload.l %}{% endfor %}{% endfor %}").render
        ),
        lambda: Value({"n": "{{ payload.l | select('in', payload.l) | list }}"}).render,
    ],
    ids=["condition", "text", "value"],
)
def test_runaway_render_is_aborted_after_the_budget(make: Any, budget: None) -> None:
    set_timeout(0.2)
    started = time.monotonic()

    with pytest.raises(TemplateRenderError, match=r"aborted: took longer than 0\.2s"):
        make()(context({"l": BIG_LIST}))

    assert time.monotonic() - started < 1.5


def test_short_renders_with_a_tiny_budget_never_leak_the_abort(budget: None) -> None:
    # Budgets about as long as the renders: the deadline fires before, during and just after
    # them. Whatever happens, only TemplateRenderError may come out, and only from a render.
    template = Text("{% for i in range(payload.n) %}{{ i }}{% endfor %}")
    rng = random.Random(7)
    outcomes = {"ok": 0, "aborted": 0}
    for _ in range(1500):
        set_timeout(rng.choice((0.00002, 0.00005, 0.0001, 0.0005)))
        try:
            count = rng.randrange(0, 300)
            text = template.render(context({"n": count}))
            outcomes["ok"] += 1
            # Plain Python between renders: a late delivery would land here.
            assert text == "".join(str(i) for i in range(count))
        except TemplateRenderError as exc:
            assert "took longer" in str(exc)
            outcomes["aborted"] += 1
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # outside any render: nothing may be delivered now
        pass
    assert outcomes["ok"] and outcomes["aborted"], outcomes


def test_nested_renders_share_the_outer_deadline(budget: None) -> None:
    set_timeout(5)
    value = Value({"a": "{{ payload.x }}", "b": ["x {{ payload.x }}"]})

    assert value.render(context({"x": 1})) == {"a": 1, "b": ["x 1"]}


# --- memory --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000000 }}",
        "{{ 1000000000 * [1] }}",
        "{{ 10 ** 100000000 }}",
        "{{ ('a' * 4000000) + ('b' * 4000000) }}",
        "{{ ('a' * 4000000) ~ ('b' * 4000000) }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "{{ 'ab'.center(1000000000) }}",
        "{{ 'ab'.ljust(1000000000) }}",
        "{{ 'ab'.rjust(1000000000) }}",
        "{{ '1'.zfill(1000000000) }}",
        "{{ 'a\tb'.expandtabs(1000000000) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ '{:>{w}}'.format(1, w=1000000000) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ '%*d' % (1000000000, 1) }}",
        "{{ 'ab' | center(1000000000) }}",
        "{{ '%*d' | format(1000000000, 1) }}",
        "{{ '%.1000000000f' | format(1.5) }}",
        "{{ 'a\nb' | indent(1000000000) }}",
        "{{ ('a\n' * 2000000) | indent(100) }}",
        "{{ 'ab' | wordwrap(1000000000) }}",
        "{{ 'ab' | truncate(1000000000) }}",
        "{{ ('a' * 4000000) | replace('a', 'bb') }}",
        "{{ ('a' * 4000000).replace('a', 'bb') }}",
        "{% for i in range(100000) %}{{ payload.s }}{% endfor %}",
    ],
)
def test_huge_values_are_refused_before_they_are_built(source: str) -> None:
    started = time.monotonic()

    with pytest.raises(TemplateRenderError, match=r"size limit|bits is not allowed"):
        Text(source).render(context({"s": "x" * 100}))

    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '%d' % 123456789012 }}", "123456789012"),
        ("{{ '{}'.format(123456789012) }}", "123456789012"),
        ("{{ '%s-%s' | format('a', 123456789012) }}", "a-123456789012"),
        ("{{ [1, 2] * 2 }}", "[1, 2, 1, 2]"),
        ("{{ 'ab' * 3 }}", "ababab"),
        ("{{ 2 ** 10 }}", "1024"),
        ("{{ 'a' ~ 1 ~ none }}", "a1None"),
        ("{{ 'x' | center(5) }}", "  x  "),
        ("{{ 'a\nb' | indent(2, true) }}", "  a\n  b"),
        ("{{ 'aa' | replace('a', 'bc') }}", "bcbc"),
        ("{{ 'ab'.zfill(4) }}", "00ab"),
    ],
)
def test_ordinary_operations_still_work(source: str, expected: str) -> None:
    assert Text(source).render(context({})) == expected


# --- the daemon ----------------------------------------------------------------------------


def runaway_routes(folder: Path, out: Path) -> Path:
    """Write a runaway route and a normal route on another channel; return the routes folder."""
    write_step(folder / "normal" / "10", f"cat > {out}")
    write_step(folder / "never" / "10", "exit 0")
    return write_routes(
        folder / "routes.d",
        "r.yml",
        f"""\
        routes:
          - name: runaway
            on: cluster/event/runaway
            when: "{QUADRATIC}"
            do: [{{run: ../never}}]
          - name: normal
            on: cluster/event/normal
            do: [{{run: ../normal}}]
        """,
    ).parent


async def test_runaway_when_is_aborted_and_the_next_event_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = runaway_routes(tmp_path, tmp_path / "out")
    async with Harness(routes, template_timeout=0.5) as router:
        router.publish("cluster/event/runaway", json.dumps({"l": BIG_LIST}))
        router.publish("cluster/event/normal", '{"n": 1}')
        await router.settle()
    assert [(call.name, call.payload) for call in router.fake.calls] == [("normal", b'{"n": 1}')]
    pattern = r"route runaway .*'cluster/event/runaway'.*took longer than 0\.5s"
    assert re.search(pattern, caplog.text)
    assert "--template-timeout" in caplog.text
    [failure] = router.journal.failures
    assert (failure.route, failure.channel) == ("runaway", "cluster/event/runaway")


def test_sigterm_during_a_runaway_render_exits_zero(
    tmp_path: Path, redis_url: str, short_tmp: Path
) -> None:
    routes = runaway_routes(tmp_path, tmp_path / "out")
    args = ["run", "--redis", redis_url, "--routes", str(routes), "--state-dir", str(short_tmp)]
    router = Router([*args, "--template-timeout", "2s"], tmp_path / "log")
    try:
        router.ready()
        redis.Redis.from_url(redis_url).publish(
            "cluster/event/runaway", json.dumps({"l": BIG_LIST})
        )
        time.sleep(0.3)  # the render is under way (it would take about half a minute)
        started = time.monotonic()

        assert router.stop(timeout=8) == 0
        assert time.monotonic() - started < 5
        assert "took longer than 2s" in router.log
    finally:
        router.kill()


RUNAWAY_UNDER_COVERAGE = """
from eventrouter.config.budget import BudgetExceeded, Watchdog

def spin():
    while True:
        pass

try:
    Watchdog(0.2).run(spin)
except BudgetExceeded:
    print("aborted")
"""


def test_a_runaway_render_is_aborted_under_a_tracer_too(tmp_path: Path) -> None:
    # A tracer (coverage here) makes CPython deliver the injected exception at any
    # instruction; it once landed between taking the watchdog's lock and entering its block.
    script = tmp_path / "runaway.py"
    script.write_text(RUNAWAY_UNDER_COVERAGE)
    done = subprocess.run(
        [sys.executable, "-m", "coverage", "run", f"--data-file={tmp_path / 'cov'}", str(script)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "aborted"), done.stderr


@pytest.mark.parametrize(
    ("data", "armed"),
    [
        ({"n": "{{ payload.n }}", "c": 1, "l": ["{{ match.m }}", "x"]}, False),  # lookups
        ({"n": "{{ payload.n * 2 }}"}, True),
        ({"n": "n={{ payload.n }}"}, True),  # text: a Jinja2 template
        ({"n": "{{ payload.gone }}"}, True),  # not found by the lookup: Jinja2 decides
    ],
)
def test_only_what_jinja2_renders_is_budgeted(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], armed: bool
) -> None:
    # A plain lookup of a value the event holds cannot run away: it is not worth the
    # watchdog's arming, which every derived event of an emit-only route paid.
    calls: list[int] = []
    real = WATCHDOG.run

    def counted(render: Any) -> Any:
        calls.append(1)
        return real(render)

    monkeypatch.setattr(WATCHDOG, "run", counted)
    context = event_context(parse_event("a/event/b", b'{"n": 3}'), match={"m": "x"})
    with contextlib.suppress(TemplateRenderError):
        Value(data).render(context)
    assert bool(calls) is armed
