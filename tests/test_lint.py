"""Tests of the deep lint (``eventrouter check``): cycles, folders, templates, patterns, names."""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventrouter.analysis import refs as refs_module
from eventrouter.analysis.explain import list_step_plans
from eventrouter.analysis.lint import deep_check
from eventrouter.analysis.loops import elementary_cycles, overlap, pattern_glob
from eventrouter.analysis.tense import past_tense
from eventrouter.analysis.verdict import validate
from eventrouter.config.loader import LoadResult, load_routes
from eventrouter.config.patterns import ChannelPattern
from eventrouter.errors import Diagnostic
from tests.routerproc import handler, run_here, write_step
from tests.routerproc import write_routes as write

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "ns8-cluster"


def load(folder: Path) -> LoadResult:
    """Load a routes folder that must have no load errors."""
    result = load_routes([folder])
    assert result.ok, "\n".join(str(d) for d in result.diagnostics)
    return result


def lint(folder: Path, events_dirs: list[Path] | None = None) -> list[Diagnostic]:
    """Return the deep-lint findings of a routes folder."""
    return deep_check(load(folder), events_dirs or [])


def having(findings: list[Diagnostic], *words: str) -> list[Diagnostic]:
    """Return the findings whose message holds every word."""
    return [d for d in findings if all(word in d.message for word in words)]


def listing(findings: list[Diagnostic]) -> str:
    """Return the findings one a line, for assertion messages."""
    return "\n".join(str(d) for d in findings) or "(no findings)"


# --- glob intersection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "two", "expected"),
    [
        ("a/*", "a/b", True),
        ("a/?", "a/bc", False),
        ("a/[bc]", "a/c", True),
        ("a/[^bc]", "a/c", False),
        ("a/[^bc]", "a/d", True),
        ("[a-b]x", "[c-e]x", False),
        ("[b-a]x", "[a]x", True),  # Redis accepts reversed ranges
        ("[^a-z]", "[a-c]", False),
        ("[^a-b]", "[a-c]", True),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("*a*", "*b*", True),
        ("a/{x}/c", "a/b/d/c", False),  # a capture is one path segment
        ("a/*/c", "a/b/d/c", True),
        ("a/{x}", "a/", False),  # ... and never empty
        ("*/event/*", "module/foo/events/x", False),
    ],
)
def test_glob_overlap(one: str, two: str, expected: bool) -> None:
    assert overlap(pattern_glob(one), pattern_glob(two)) is expected
    assert overlap(pattern_glob(two), pattern_glob(one)) is expected


PIECES = ["a", "b", "/", "ab", "a/", "*", "b*", "?", "[ab]", "[a-c]", "[^a]", "[^/]", "[/a]"]
PIECES += ["\\*", "{x}"]
#: Every channel of up to 6 characters over a small alphabet ("c" stands for any other).
CHANNELS = ["".join(p) for n in range(7) for p in itertools.product("ab/*c", repeat=n)]


def _random_pattern(rng: random.Random) -> str:
    text, count = "", 0
    for piece in (rng.choice(PIECES) for _ in range(rng.randint(0, 4))):
        text += piece.replace("{x}", f"{{x{count}}}")  # capture names must differ
        count += piece == "{x}"
    return text or "a"


@functools.cache
def _channels_of(text: str) -> frozenset[str]:
    pattern = ChannelPattern.parse(text)
    if pattern.regex is None:  # a literal: ChannelPattern.match compares it as a string
        return frozenset(CHANNELS) & {text}
    # The channels are ASCII: ChannelPattern.match is its regex's fullmatch. Filtering with
    # the regex's own method keeps the 19,531 matches per pattern out of the Python tracer.
    return frozenset(filter(re.compile(pattern.regex, re.DOTALL).fullmatch, CHANNELS))


def test_glob_overlap_agrees_with_brute_force() -> None:
    rng = random.Random(8)
    checked = 0
    while checked < 400:
        one, two = _random_pattern(rng), _random_pattern(rng)
        tokens = [t for text in (one, two) for t in pattern_glob(text).tokens if not t.star]
        if len(tokens) > 6:
            continue  # a shortest common channel has at most one character per such token
        checked += 1
        expected = bool(_channels_of(one) & _channels_of(two))
        assert overlap(pattern_glob(one), pattern_glob(two)) is expected, (one, two)
        assert overlap(pattern_glob(two), pattern_glob(one)) is expected, (two, one)


def test_elementary_cycles_are_each_found_once() -> None:
    graph = {0: {1: "", 2: ""}, 1: {0: "", 2: ""}, 2: {0: "", 1: "", 2: ""}, 3: {0: ""}}
    cycles, more = elementary_cycles(graph)
    assert sorted(map(tuple, cycles)) == [(0, 1), (0, 1, 2), (0, 2), (0, 2, 1), (1, 2), (2,)]
    assert not more


def test_elementary_cycles_stop_at_the_limit() -> None:
    nodes = range(8)  # a complete graph has thousands of cycles
    graph = {a: {b: "" for b in nodes if b != a} for a in nodes}
    cycles, more = elementary_cycles(graph, limit=10)
    assert len(cycles) == 10
    assert more


# --- cycles ---------------------------------------------------------------------------------


def test_cross_file_cycle_names_every_route_and_file(tmp_path: Path) -> None:
    one = write(
        tmp_path,
        "10-ping.yml",
        """\
        routes:
          - name: pinger
            on: x/event/pinged
            do:
              - emit: {channel: x/event/ponged}
        """,
    )
    two = write(
        tmp_path,
        "20-pong.yml",
        """\
        # padding
        routes:
          - name: ponger
            on: x/event/ponged
            do:
              - emit: {channel: x/event/pinged}
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert len(findings) == 1, listing(findings)
    found = findings[0]
    assert (found.file, found.line, found.severity) == (str(one), 2, "error")
    assert found.message.startswith(
        f"derived-event cycle: pinger ({one}:2) emits x/event/ponged -> "
        f"ponger ({two}:3) emits x/event/pinged -> pinger"
    )


def test_chain_without_cycle_is_not_reported(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: pinger
            on: x/event/pinged
            do:
              - emit: {channel: x/event/ponged}
          - name: ponger
            on: x/event/ponged
            do:
              - emit: {channel: x/event/finished}
        """,
    )
    assert having(lint(tmp_path), "cycle") == []


def test_templated_channel_closes_a_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: relay
            on: x/event/pinged
            do:
              - emit:
                  channel: "x/event/{{ payload.kind }}"
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [d.severity for d in findings] == ["error"], listing(findings)
    assert "relay (" in findings[0].message
    assert "emits x/event/{{ payload.kind }} -> relay" in findings[0].message


def test_templated_channel_elsewhere_is_no_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: relay
            on: x/event/pinged
            do:
              - emit:
                  channel: "y/event/{{ payload.kind }}"
        """,
    )
    assert having(lint(tmp_path), "cycle") == []


@pytest.mark.parametrize(
    ("pattern", "cycle"),
    [("x/{id}/event/pinged", False), ("x/*/event/pinged", True), ("x/[bc]/*", False)],
)
def test_capture_matches_one_segment_only(tmp_path: Path, pattern: str, cycle: bool) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: relay
            on: "{pattern}"
            do:
              - emit: {{channel: x/a/b/event/pinged}}
        """,
    )
    assert bool(having(lint(tmp_path), "derived-event cycle")) is cycle


@pytest.mark.parametrize(("part", "cycle"), [("match.id", False), ("payload.id", True)])
def test_emitted_capture_is_one_segment(tmp_path: Path, part: str, cycle: bool) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: one
            on: x/{{id}}/event/pinged
            do:
              - emit: {{channel: "x/{{{{ {part} }}}}/event/ponged"}}
          - name: two
            on: x/a/b/event/ponged
            do:
              - emit: {{channel: x/q/event/pinged}}
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert len(findings) == int(cycle), listing(findings)


def test_too_many_cycles_are_cut_short(tmp_path: Path) -> None:
    body = "routes:\n"
    for number in range(6):  # each emits what every route listens to: 415 cycles
        body += f"  - name: r{number}\n    on: x/event/e{number}-happened\n"
        body += '    do:\n      - emit: {channel: "x/event/{{ payload.next }}"}\n'
    write(tmp_path, "routes.yml", body)
    findings = lint(tmp_path)
    assert len(having(findings, "derived-event cycle: ")) == 50
    assert len(having(findings, "more than 50 derived-event cycles")) == 1


def test_cycle_that_every_when_can_break_is_a_warning(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: pinger
            on: x/event/pinged
            when: payload.hops is defined and payload.hops < 3
            do:
              - emit: {channel: x/event/ponged, payload: {hops: "{{ payload.hops + 1 }}"}}
          - name: ponger
            on: x/event/ponged
            when: payload.hops < 3
            do:
              - emit: {channel: x/event/pinged, payload: {hops: "{{ payload.hops }}"}}
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [d.severity for d in findings] == ["warning"], listing(findings)
    assert "every route on it has a when: condition that can stop it" in findings[0].message


@pytest.mark.parametrize("when", [None, "'true'", "1 == 1"])
def test_cycle_with_a_route_that_cannot_stop_is_an_error(tmp_path: Path, when: str | None) -> None:
    condition = f"when: {when}" if when else ""
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: pinger
            on: x/event/pinged
            when: payload.hops < 3
            do:
              - emit: {{channel: x/event/ponged}}
          - name: ponger
            on: x/event/ponged
            {condition}
            do:
              - emit: {{channel: x/event/pinged}}
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [d.severity for d in findings] == ["error"], listing(findings)
    assert "no when: condition can stop it at ponger;" in findings[0].message


LITERAL_LOOP = """\
routes:
  - name: looping
    on: x/event/job-finished
    when: {when}
    do:
      - emit:
          channel: x/event/job-finished
          payload: {payload}
"""


def test_cycle_whose_when_holds_for_the_literal_emit_is_an_error(tmp_path: Path) -> None:
    text = LITERAL_LOOP.format(when="payload.status == 'failed'", payload="{status: failed}")
    path = write(tmp_path, "routes.yml", text)
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [str(d) for d in findings] == [
        f"{path}:2: error: derived-event cycle: looping ({path}:2) emits x/event/job-finished "
        "-> looping (the when: of looping (payload.status == 'failed') holds for every event "
        'looping emits to it (payload.status = "failed"); only the runtime loop guard will '
        "stop it: change a condition or an emitted payload)"
    ]
    done = run_here("check", "--routes", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("when", "payload", "found"),
    [
        # the literal emit never passes the condition: no cycle at all
        ("payload.status == 'failed'", "{status: ok}", []),
        ("payload.status is defined", "{other: 1}", []),
        ("match.what == 'ping'", "{}", []),
        # a field read that is a template: the condition may stop it
        ("payload.status == 'failed'", "{status: '{{ payload.status }}'}", ["warning"]),
        # what check time cannot know: where the router runs
        ("payload.status == 'failed' and router.leader", "{status: failed}", ["warning"]),
        # it holds for the literal fields it reads, whatever the templated ones say
        ("payload.status == 'failed'", "{status: failed, n: '{{ payload.n }}'}", ["error"]),
        ("payload.n is not defined", "{status: failed}", ["error"]),
        ("name == 'job-finished' and 'status' in payload", "{status: failed}", ["error"]),
    ],
)
def test_cycle_whose_when_reads_only_literals_is_judged_on_them(
    tmp_path: Path, when: str, payload: str, found: list[str]
) -> None:
    text = LITERAL_LOOP.format(when=f'"{when}"', payload=payload)
    if "match." in when:
        text = text.replace("on: x/event/job-finished", "on: x/event/{what}-finished")
    write(tmp_path, "routes.yml", text)
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [d.severity for d in findings] == found, listing(findings)


def test_a_literal_when_on_one_hop_of_a_longer_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: first
            on: x/event/pinged
            when: payload.hops < 3
            do:
              - emit: {channel: x/event/ponged, payload: {phase: 2}}
          - name: second
            on: x/event/ponged
            when: payload.phase == 2
            do:
              - emit: {channel: x/event/pinged, payload: {hops: "{{ payload.hops }}"}}
        """,
    )
    findings = having(lint(tmp_path), "derived-event cycle")
    assert [d.severity for d in findings] == ["error"], listing(findings)
    assert "the when: of second (payload.phase == 2) holds for every event first emits" in (
        findings[0].message
    )


def test_disabled_route_breaks_the_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: relay
            on: x/event/pinged
            enabled: false
            do:
              - emit: {channel: x/event/pinged}
        """,
    )
    assert having(lint(tmp_path), "cycle") == []


def test_three_route_cycle_is_reported_once_from_its_first_route(tmp_path: Path) -> None:
    body = "routes:\n"
    for name, on, to in [("c", "z", "x"), ("a", "x", "y"), ("b", "y", "z")]:
        body += f"  - name: {name}\n    on: q/event/{on}-happened\n"
        body += f"    do:\n      - emit: {{channel: q/event/{to}-happened}}\n"
    write(tmp_path, "routes.yml", body)
    findings = having(lint(tmp_path), "derived-event cycle")
    assert len(findings) == 1, listing(findings)
    assert findings[0].message.startswith("derived-event cycle: c (")
    assert "-> a (" in findings[0].message
    assert "-> b (" in findings[0].message
    assert findings[0].message.endswith(
        "-> c (no when: condition can stop it at c, a, b; only the runtime loop guard will)"
    )


def test_cli_check_exits_1_on_a_cycle(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: relay
            on: x/event/pinged
            do:
              - emit: {channel: x/event/pinged}
        """,
    )
    done = run_here("check", "--routes", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"{path}:2: error: derived-event cycle: relay ({path}:2) emits x/event/pinged"
        in done.stdout
    )


def test_cli_check_exits_0_on_the_examples() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventrouter",
            "check",
            "--routes",
            str(EXAMPLES / "routes.d"),
            "--events-dir",
            str(EXAMPLES / "events"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": error:" not in done.stdout


def test_many_routes_with_one_long_cycle(tmp_path: Path) -> None:
    count = 2000  # a long chain also proves the cycle search is not recursive
    body = "routes:\n"
    for number in range(count):
        body += f"  - name: r{number}\n    on: [q/event/e{number}-happened, 'n{number}/*']\n"
        body += f"    do:\n      - emit: {{channel: q/event/e{(number + 1) % count}-happened}}\n"
    write(tmp_path, "routes.yml", body)
    findings = lint(tmp_path)
    cycles = having(findings, "derived-event cycle")
    assert len(cycles) == 1, listing(findings[:5])
    assert cycles[0].message.count(" emits ") == count
    assert findings == cycles


# --- handler and events folders -------------------------------------------------------------


def _broken_folder(folder: Path) -> Path:
    handler(folder)
    (folder / "20plain").write_text("#!/bin/sh\n")
    (folder / "30sub").mkdir()
    (folder / "40gone").symlink_to(folder / "missing")
    (folder / "50backup~").write_text("")  # passed over, like the runner does
    return folder


def test_handler_folder_entries_that_will_not_run(tmp_path: Path) -> None:
    folder = _broken_folder(tmp_path / "handlers" / "h")
    path = write(
        tmp_path / "routes.d",
        "routes.yml",
        """\
        routes:
          - name: r
            on: x/event/happened
            do:
              - run: ../handlers/h
        """,
    )
    findings = lint(tmp_path / "routes.d")
    assert {(d.file, d.line, d.severity) for d in findings} == {(str(path), 5, "warning")}
    assert len(having(findings, f"{folder / '20plain'} is not executable")) == 1
    assert len(having(findings, f"{folder / '30sub'} is a directory, not a step")) == 1
    assert len(having(findings, f"{folder / '40gone'} is a dangling symlink")) == 1
    assert len(having(findings, f"{folder / '50backup~'} is an editor backup (*~)")) == 1
    assert having(findings, "50backup", "never run (rename it to make it a step)")
    assert having(findings, "no runnable step") == []


def test_events_folder_with_a_name_that_never_runs(tmp_path: Path) -> None:
    events = tmp_path / "events"
    handler(events / "bad name")
    handler(events / "good-happened")
    (tmp_path / "routes.d").mkdir()
    findings = lint(tmp_path / "routes.d", [events])
    assert [(d.file, d.message) for d in findings] == [
        (str(events / "bad name"), "never runs: event names must match [A-Za-z0-9][A-Za-z0-9._-]*")
    ]


def test_handler_folder_without_a_runnable_step(tmp_path: Path) -> None:
    (tmp_path / "handlers" / "empty").mkdir(parents=True)
    handler(tmp_path / "handlers" / "good")
    write(
        tmp_path / "routes.d",
        "routes.yml",
        """\
        routes:
          - name: r
            on: x/event/happened
            do:
              - run: ../handlers/empty
              - run: ../handlers/good
        """,
    )
    findings = lint(tmp_path / "routes.d")
    assert len(findings) == 1, listing(findings)
    assert findings[0].message == (
        f"route r: handler folder {tmp_path / 'handlers' / 'empty'} has nothing to run: it "
        "holds no step (add executable steps, or remove the action)"
    )
    assert (findings[0].severity, findings[0].line) == ("error", 5)


def test_handler_folder_whose_only_step_is_not_executable_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "handlers" / "h"
    folder.mkdir(parents=True)
    (folder / "10step").write_text("#!/bin/sh\n")  # not executable
    (folder / ".hidden").write_text("")
    write(
        tmp_path / "routes.d",
        "routes.yml",
        """\
        routes:
          - name: r
            on: x/event/happened
            do:
              - run: ../handlers/h
        """,
    )
    findings = lint(tmp_path / "routes.d")
    assert [(d.severity, d.message) for d in findings] == [
        (
            "warning",
            f"route r: {folder / '.hidden'} is a hidden name (leading .): it is never run "
            "(rename it to make it a step)",
        ),
        (
            "warning",
            f"route r: {folder / '10step'} is not executable; it is skipped (chmod +x to run it)",
        ),
        (
            "error",
            f"route r: handler folder {folder} has nothing to run: none of its entries is an "
            "executable step at check time, and only a step that runs could make another one "
            "executable (chmod +x the steps to run, or remove the action)",
        ),
    ]
    done = run_here("check", "--routes", str(tmp_path / "routes.d"))
    assert done.returncode == 1, done.stdout + done.stderr


def test_events_folders_are_checked(tmp_path: Path) -> None:
    events = tmp_path / "events"
    handler(events / "good-happened")
    _broken_folder(events / "bad-happened")
    (events / "empty-happened").mkdir()
    (tmp_path / "routes.d").mkdir()
    findings = lint(tmp_path / "routes.d", [events])
    assert {d.file for d in findings} == {
        str(events / "bad-happened"),
        str(events / "empty-happened"),
    }, listing(findings)
    assert len(having(findings, "is a directory, not a step")) == 1
    assert len(having(findings, "has no runnable step")) == 1


def test_check_says_what_is_true_of_a_file_that_is_not_executable(tmp_path: Path) -> None:
    events = tmp_path / "events"
    folder = handler(events / "module-added")
    (folder / "20placeholder").write_text("# kept on purpose, never run\n")
    (folder / "25empty").write_text("")
    (folder / "30script").write_text("#!/bin/sh\nexit 0\n")
    action = tmp_path / "actions" / "configure-module"
    action.mkdir(parents=True)
    (action / "10configure").write_text("#!/bin/sh\nexit 0\n")
    (folder / "40elsewhere").symlink_to(action / "10configure")
    (folder / "50here").symlink_to(folder / "30script")
    (tmp_path / "routes.d").mkdir()

    findings = lint(tmp_path / "routes.d", [events])

    said = {Path(d.message.split(" ", 1)[0]).name: d.message for d in findings}
    assert sorted(said) == ["20placeholder", "25empty", "30script", "40elsewhere", "50here"]
    placeholder = "is not executable and has no #! line: a placeholder, never run"
    assert said["20placeholder"] == f"{folder / '20placeholder'} {placeholder}"
    assert said["25empty"] == f"{folder / '25empty'} {placeholder}"
    advice = "is not executable; it is skipped (chmod +x to run it)"
    assert said["30script"] == f"{folder / '30script'} {advice}"
    assert said["50here"] == f"{folder / '50here'} {advice}"  # the same folder's own file
    target = os.path.realpath(action / "10configure")
    assert said["40elsewhere"] == (
        f"{folder / '40elsewhere'} is a symlink to {target}, which is not executable: it is "
        f"skipped (chmod +x on the link would change {target} itself)"
    )


def test_check_and_explain_name_steps_the_kernel_will_refuse(tmp_path: Path) -> None:
    events = tmp_path / "events"
    folder = handler(events / "module-added")  # 10step, which runs
    for name, text in [("20noshebang", "exit 0\n"), ("30nointerp", "#!/nonexistent/sh -e\n")]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    shutil.copy("/bin/true", folder / "40binary")  # no #! line, but a program the kernel knows
    write_step(folder / "50relative", "exit 0").write_text("#!bin/sh\n")  # found from the cwd
    write_step(folder / "60crlf", "exit 0").write_text("#!/bin/sh\r\nexit 0\r\n")
    (tmp_path / "routes.d").mkdir()

    findings = lint(tmp_path / "routes.d", [events])
    plans = list_step_plans(folder)

    no_shebang = "cannot be started: it has no #! line, so the kernel refuses to start it"
    no_interpreter = "cannot be started: its #! line names /nonexistent/sh, which does not exist"
    crlf = (
        "cannot be started: its #! line ends with a carriage return (Windows line endings), "
        "so the kernel looks for /bin/sh\\x0d, which does not exist"
    )
    assert [d.message for d in findings] == [
        f"{folder / '20noshebang'} {no_shebang} (Exec format error); it is skipped and the next "
        "steps run",
        f"{folder / '30nointerp'} {no_interpreter}; it is skipped and the next steps run",
        f"{folder / '60crlf'} {crlf}; it is skipped and the next steps run",
    ]
    assert [(p.name, p.runs, p.reason) for p in plans] == [
        ("10step", True, None),
        ("20noshebang", False, f"{no_shebang} (Exec format error)"),
        ("30nointerp", False, no_interpreter),
        ("40binary", True, None),
        ("50relative", True, None),
        ("60crlf", False, crlf),
    ]


def test_check_names_the_files_passed_over(tmp_path: Path) -> None:
    events = tmp_path / "events"
    folder = handler(events / "module-added")
    for name in [".hidden", "10step~", ".10step.swp", "10step.orig", "10step.dpkg-new"]:
        write_step(folder / name, "exit 0")
    (tmp_path / "routes.d").mkdir()

    done = run_here("check", "--routes", str(tmp_path / "routes.d"), "--events-dir", str(events))

    assert done.returncode == 0, done.stdout + done.stderr
    named = [line for line in done.stdout.splitlines() if "never run" in line]
    assert named == [
        f"{events / 'module-added'}:0: warning: {folder / name} is {kind}: it is never run "
        "(rename it to make it a step)"
        for name, kind in [
            (".10step.swp", "an editor swap file (*.swp)"),
            (".hidden", "a hidden name (leading .)"),
            ("10step.dpkg-new", "a package manager's copy (*.dpkg-*)"),
            ("10step.orig", "a backup left by patch or a merge tool (*.orig)"),
            ("10step~", "an editor backup (*~)"),
        ]
    ]


def test_check_notes_an_event_in_two_events_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    handler(first / "module-added")
    write_step(first / "module-added" / "20first", "exit 0")
    handler(second / "module-added")
    write_step(second / "module-added" / "30second", "exit 0")
    handler(second / "module-removed")
    (tmp_path / "routes.d").mkdir()

    findings = lint(tmp_path / "routes.d", [first, second])

    assert [(d.file, d.severity) for d in findings] == [(str(second / "module-added"), "warning")]
    assert findings[0].message == (
        f"runs as a handler of its own, besides {first / 'module-added'} for the same event: "
        "the two run independently (a failing step in one does not stop the other); NS8's "
        f"agent would merge them into one handler, where this folder's 10step would replace "
        f"{first / 'module-added'}'s"
    )


# --- templates against event schemas --------------------------------------------------------


def test_when_field_missing_from_a_well_known_event(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: cluster/event/module-added
            when: payload.modul == "mail1" and payload.node == 1
            do:
              - emit: {channel: cluster/event/module-domain-changed}
        """,
    )
    findings = lint(tmp_path)
    assert [str(d) for d in findings] == [
        f"{path}:2: warning: route r: 'when' uses payload.modul, which module-added does not "
        "carry (fields: module, node)"
    ]


def test_present_fields_are_not_reported(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: cluster/event/module-added
            when: "payload.module is defined and payload.get('node') == 1 and 'module' in payload"
            do:
              - emit: {channel: cluster/event/module-domain-changed}
        """,
    )
    assert lint(tmp_path) == []


@pytest.mark.parametrize(
    "when",
    [
        "payload.modul is defined and payload.modul == 'mail1'",
        "payload.modul is defined",
        "payload.modul is not defined or payload.modul == 'mail1'",
        "payload.get('modul') == 'mail1'",
        "'modul' in payload and payload.modul == 'mail1'",
        "'modul' not in payload",
        "payload.modul == 'mail1' if payload.modul is defined else false",
        "payload.modul is undefined or payload.modul == 'mail1'",
        "not (payload.modul is defined) or payload.modul == 'mail1'",
    ],
)
def test_a_field_the_schema_lacks_is_reported_guarded_or_not(tmp_path: Path, when: str) -> None:
    # A guard keeps the template from failing, not the route from never firing: the
    # examples' own style (`payload.x is defined and ...`) must not hide a typo.
    path = write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: cluster/event/module-added
            when: "{when}"
            do:
              - emit: {{channel: cluster/event/module-domain-changed}}
        """,
    )
    assert [str(d) for d in lint(tmp_path)] == [
        f"{path}:2: warning: route r: 'when' uses payload.modul, which module-added does not "
        "carry (fields: module, node)"
    ]


@pytest.mark.parametrize(
    "when", ["(payload.extra | default('')) == 'mail1'", "payload['extra'] | d('') == 'mail1'"]
)
def test_a_field_given_a_default_is_an_optional_extra_not_a_typo(tmp_path: Path, when: str) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: cluster/event/module-added
            when: "{when}"
            do:
              - emit: {{channel: cluster/event/module-domain-changed}}
        """,
    )
    assert lint(tmp_path) == []


def test_a_guarded_name_that_is_not_a_field_stays_quiet(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: cluster/event/module-added
            when: "extra is defined and payload.module == 'x'"
            do:
              - emit: {channel: cluster/event/module-domain-changed}
        """,
    )
    assert lint(tmp_path) == []


QUICK_SCAN_CASES = [
    "payload.get('modul') == 'x' and payload.nod == 1",
    "payload.modul.upper() == 'X'",
    "payload['modul'] == 'x' or payload['node'] == 1",
    "payload.modul | default('x') == payload.modul",
    "match.id == 'x' and match['nope'] == 'y'",
    "paylod.module == 'x'",
    "payload.module is defined and payload.module ~ '}}' == payload.modul",
    "payload.modul is defined and payload.module == 'x'",
    "'nod' in payload",
]


@pytest.mark.parametrize("when", QUICK_SCAN_CASES)
def test_quick_scan_agrees_with_the_syntax_tree(
    tmp_path: Path, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler(tmp_path / "h")
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: cluster/event/module-added
            when: "{when}"
            do:
              - run: h
                env: {{A: "{{{{ {when} }}}}"}}
        """,
    )
    quick = [str(d) for d in lint(tmp_path)]
    monkeypatch.setattr(refs_module, "_scan", lambda source, expression: None)
    assert quick == [str(d) for d in lint(tmp_path)]
    assert quick  # each case has a problem to find


@pytest.mark.parametrize(
    "pattern",
    [
        "cluster/event/*",  # could be any event
        "cluster/event/module-happened",  # no schema
        "module/{id}/event/module-added",  # module-added comes from the cluster only
    ],
)
def test_events_without_a_known_schema_are_not_checked(tmp_path: Path, pattern: str) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: "{pattern}"
            when: payload.modul == "mail1"
            do:
              - emit: {{channel: y/event/happened}}
        """,
    )
    assert having(lint(tmp_path), "payload.modul") == []


def test_emit_and_env_templates_are_checked_at_their_action_line(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: node/{node}/event/backup-status-changed
            do:
              - emit:
                  channel: "node/{{ match.node }}/event/{{ payload.status }}-reported"
                  payload:
                    ids: ["{{ payload.backup }}", "{{ payload.backup_id }}"]
              - run: h
                env:
                  NODE: "{{ match.nod }}"
                  MODULE: "{{ payload.module_id }}"
        """,
    )
    found = sorted(str(d) for d in lint(tmp_path))
    fields = "(fields: node_id, module_id, backup_id)"
    assert found == [
        f"{path}:5: warning: route r: 'emit channel' uses payload.status, which "
        f"backup-status-changed does not carry {fields}",
        f"{path}:5: warning: route r: 'emit payload.ids[0]' uses payload.backup, which "
        f"backup-status-changed does not carry {fields}",
        f"{path}:9: error: route r: 'env NODE' uses match.nod, which pattern "
        "node/{node}/event/backup-status-changed does not capture (did you mean match.node?)",
    ]


def test_names_that_do_not_exist_are_errors_with_the_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: module/{module}/event/backup-finished
            do:
              - emit:
                  channel: cluster/event/x-happened
                  payload:
                    a: "{{ foo }}"
                    b: "{{ match.modul }}"
                    c: "{{ router.nod }}"
                    d: "{{ env.ANYTHING }}"
                    e: "{{ payload.anything }}"
                    f: "{{ rooter.node }}"
        """,
    )
    found = [str(d) for d in lint(tmp_path)]
    context = "channel, source, name, payload, raw, match, route, router, env"
    assert found == [
        f"{path}:5: error: route r: 'emit payload.a' uses foo, which is not defined "
        f"(templates see: {context})",
        f"{path}:5: error: route r: 'emit payload.b' uses match.modul, which pattern "
        "module/{module}/event/backup-finished does not capture (did you mean match.module?)",
        f"{path}:5: error: route r: 'emit payload.c' uses router.nod, which the router does "
        "not have (did you mean router.node?)",
        f"{path}:5: error: route r: 'emit payload.f' uses rooter, which is not defined "
        "(did you mean router?)",
    ]
    done = run_here("check", "--routes", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 route checked: 4 errors, 0 warnings" in done.stderr


def test_the_key_template_is_checked_too(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: module/{module}/event/x-happened
            key: "{{ match.modul }}"
            do:
              - emit: {channel: y/event/z-happened}
        """,
    )
    assert [(d.severity, d.line, d.message) for d in lint(tmp_path)] == [
        (
            "error",
            2,
            "route r: 'key' uses match.modul, which pattern module/{module}/event/x-happened "
            "does not capture (did you mean match.module?)",
        )
    ]


def test_a_name_that_exists_for_only_some_patterns(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: ["module/{module}/event/x-happened", cluster/event/x-happened]
            do:
              - emit: {channel: "y/event/{{ match.module }}-happened"}
          - name: guarded
            on: ["module/{module}/event/x-happened", cluster/event/x-happened]
            do:
              - emit: {channel: "y/event/{{ match.module | default('cluster') }}-seen"}
        """,
    )
    findings = lint(tmp_path)
    assert [(d.severity, d.message) for d in findings] == [
        (
            "error",
            "route r: 'emit channel' uses match.module, which pattern cluster/event/x-happened "
            "does not capture (it captures nothing)",
        )
    ]


def test_declared_schema_and_undefined_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        "routes.yml",
        """\
        schemas:
          thing-happened:
            source: module
            fields: {size: integer, "label?": string}
        routes:
          - name: r
            on: "*/event/thing-happened"
            when: payload.label == "x" and payload.colour == "red" and paylod.size
            do:
              - emit: {channel: y/event/happened}
        """,
    )
    findings = lint(tmp_path)
    assert len(findings) == 2, listing(findings)
    assert having(
        findings, "payload.colour, which thing-happened does not carry (fields: size, label)"
    )
    assert having(findings, "uses paylod, which is not defined (did you mean payload?)")


# --- patterns, duplicates, folders run twice ------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "never"),
    [
        ("module/foo/events/x", True),
        ("module/[a-z]/event", True),
        ("*/events/*", False),  # "a/event/b/events/c" fits
        ("module/*", False),
        ("*/event/*", False),
    ],
)
def test_pattern_that_can_never_match_an_event(tmp_path: Path, pattern: str, never: bool) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: "{pattern}"
            do:
              - emit: {{channel: y/event/happened}}
        """,
    )
    found = having(lint(tmp_path), f"pattern {pattern} can never match an event channel")
    assert len(found) == int(never)


@pytest.mark.parametrize(("second_when", "duplicate"), [("payload.a", True), ("payload.b", False)])
def test_duplicate_route(tmp_path: Path, second_when: str, duplicate: bool) -> None:
    handler(tmp_path / "h")
    template = """\
          - name: {name}
            on: x/event/happened
            when: {when}
            do:
              - run: h
    """
    body = "routes:\n" + textwrap.dedent(template).format(name="a", when="payload.a")
    body += textwrap.dedent(template).format(name="b", when=second_when)
    write(tmp_path, "routes.yml", body)
    findings = lint(tmp_path)
    dups = having(findings, "route b: duplicates route a")
    assert len(dups) == int(duplicate), listing(findings)
    if duplicate:
        assert dups[0].line == 7
        assert having(findings, "run the folder twice") == []  # said once, as a duplicate
    else:
        assert len(having(findings, "route b: runs handler folder", "run the folder twice")) == 1


def test_duplicate_route_is_what_a_reload_sees_as_unchanged(tmp_path: Path) -> None:
    # Mapping order in an emit payload changes nothing a route does: the reload's digest
    # ignores it, and so must the duplicate check (one fingerprint for both).
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: a
            on: x/event/happened
            do:
              - emit: {channel: y/event/seen, payload: {one: "{{ payload.a }}", two: 2}}
          - name: b
            on: x/event/happened
            do:
              - emit: {channel: y/event/seen, payload: {two: 2, one: "{{ payload.a }}"}}
        """,
    )
    result = load_routes([tmp_path])
    first, second = result.routes
    assert first.digest == second.digest
    assert len(having(lint(tmp_path), "route b: duplicates route a")) == 1


@pytest.mark.parametrize(
    ("first", "second", "twice"),
    [
        ("x/event/*-added", "*/event/module-added", True),
        ("x/event/*-added", "x/event/*-removed", False),
    ],
)
def test_same_folder_run_twice_for_one_event(
    tmp_path: Path, first: str, second: str, twice: bool
) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: a
            on: "{first}"
            do:
              - run: h
          - name: b
            on: "{second}"
            do:
              - emit: {{channel: y/event/happened}}
              - run: ./h
        """,
    )
    findings = having(lint(tmp_path), "run the folder twice")
    assert len(findings) == int(twice), listing(findings)
    if twice:
        assert findings[0].line == 10
        assert findings[0].message.startswith(f"route b: runs handler folder {tmp_path / 'h'}, ")
        assert f"as route a ({path}:2) does, and patterns {first} and {second}" in (
            findings[0].message
        )


@pytest.mark.parametrize(("pattern", "twice"), [("*/event/*", True), ("x/event/other-ed", False)])
def test_route_running_an_events_folder(tmp_path: Path, pattern: str, twice: bool) -> None:
    events = tmp_path / "events"
    handler(events / "module-added")
    write(
        tmp_path / "routes.d",
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: "{pattern}"
            do:
              - run: ../events/module-added
        """,
    )
    findings = having(lint(tmp_path / "routes.d", [events]), "also runs by convention for")
    assert len(findings) == int(twice), listing(findings)


# --- past tense -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "past"),
    [
        ("add", "added"),
        ("finish", "finished"),
        ("renew", "renewed"),
        ("remove", "removed"),
        ("apply", "applied"),
        ("deploy", "deployed"),
        ("stop", "stopped"),
        ("plan", "planned"),
        ("open", "opened"),
        ("fix", "fixed"),
        ("commit", "committed"),
        ("send", "sent"),
        ("write", "written"),
        ("set", "set"),
        ("starting", "started"),
        ("stopping", "stopped"),
        ("updates", "updated"),
        ("install", "installed"),
    ],
)
def test_past_tense(word: str, past: str) -> None:
    assert past_tense(word) == past


def test_event_names_not_in_the_past_tense(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: [cluster/event/module-add, cluster/event/module-removed, "x/event/*", "x/event/run"]
            do:
              - emit: {channel: cluster/event/backup-finish}
              - emit: {channel: "cluster/event/{{ payload.kind }}"}
              - emit: {channel: cluster/event/cert-renewed}
        """,
    )
    findings = having(lint(tmp_path), "past tense")
    assert sorted(str(d) for d in findings) == [
        f"{path}:2: warning: route r: event name 'module-add' (pattern cluster/event/module-add) "
        "is not in the past tense; event names say what happened: did you mean 'module-added'?",
        f"{path}:5: warning: route r: event name 'backup-finish' (emitted channel "
        "cluster/event/backup-finish) is not in the past tense; event names say what happened: "
        "did you mean 'backup-finished'?",
    ]


@pytest.mark.parametrize("name", ["backup-alert", "disk-alerts", "backup-status", "node-health"])
def test_a_name_ending_in_a_noun_gets_no_made_up_verb(tmp_path: Path, name: str) -> None:
    write(
        tmp_path,
        "routes.yml",
        f"""\
        routes:
          - name: r
            on: cluster/event/{name}
            do:
              - emit: {{channel: x/event/y-happened}}
        """,
    )
    [finding] = having(lint(tmp_path), "past tense")
    assert "did you mean" not in finding.message
    assert finding.message == (
        f"route r: event name {name!r} (pattern cluster/event/{name}) does not say what "
        "happened: event names end in the past tense; end it with what happened to it, as in "
        "backup-status-changed"
    )


# --- the shipped examples -------------------------------------------------------------------


def test_examples_have_no_findings() -> None:
    result = load_routes([EXAMPLES / "routes.d"])
    assert result.ok
    findings = deep_check(result, [EXAMPLES / "events"])
    assert findings == [], listing(findings)


def test_handler_folder_gone_after_loading_is_reported(tmp_path: Path) -> None:
    folder = handler(tmp_path / "h")
    write(
        tmp_path,
        "routes.yml",
        """\
        routes:
          - name: r
            on: x/event/happened
            do:
              - run: h
        """,
    )
    result = load(tmp_path)
    (folder / "10step").unlink()
    folder.rmdir()
    findings = deep_check(result, [])
    assert [d.message for d in findings] == [
        f"route r: handler folder {folder} cannot be read: No such file or directory"
    ]


def test_a_checked_table_leaves_no_work_of_the_check_behind(tmp_path: Path) -> None:
    # The running router keeps the table, not the deep check's globs and syntax trees.
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: r\n    on: module/{m}/event/x\n"
        "    do: [{emit: {channel: 'a/event/{{ match.m }}', payload: '{{ payload.n + 1 }}'}}]\n"
    )
    result = validate(load_routes([tmp_path]), [])
    assert result.ok, result.diagnostics
    assert pattern_glob.cache_info().currsize == 0
    assert refs_module.parse.cache_info().currsize == 0
