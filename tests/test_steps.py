"""Tests of the step-directory runner, with real shell scripts as steps."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import tracemalloc
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from eventrouter.runtime.steps import (
    HandlerResult,
    SkippedEntry,
    StepResult,
    StepRunner,
    list_steps,
)

LOGGER = "eventrouter.runtime.steps"
TAG = "[route r1 event cluster/event/e1]"


def script(directory: Path, name: str, body: str, *, mode: int = 0o755) -> Path:
    """Write an executable shell script step."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def runner_env(**extra: str) -> dict[str, str]:
    """Return a minimal router environment (no AGENT_STATE_DIR unless given)."""
    return {"PATH": os.environ["PATH"], **extra}


async def run(
    runner: StepRunner,
    directory: Path,
    *,
    payload: bytes = b"{}",
    env: dict[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 (passed through as the step timeout)
) -> HandlerResult:
    """Run a handler with the usual event, never waiting more than 15 s."""
    return await asyncio.wait_for(
        runner.run_handler(
            directory,
            payload=payload,
            env=env or {},
            event_name="e1",
            event_source="cluster",
            timeout=timeout,
            tag=TAG,
        ),
        15,
    )


def alive(pid: int) -> bool:
    """Return whether ``pid`` is a live (not zombie) process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


async def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def step_messages(caplog: pytest.LogCaptureFixture, step: str) -> list[logging.LogRecord]:
    """Return the relayed output records of ``step``."""
    prefix = f"{TAG} step {step}: "
    return [r for r in caplog.records if r.getMessage().startswith(prefix)]


def text_of(record: logging.LogRecord, step: str) -> str:
    """Return the relayed text of an output record."""
    return record.getMessage().removeprefix(f"{TAG} step {step}: ")


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


# --- listing -------------------------------------------------------------------------------


async def test_steps_run_in_bytewise_name_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Log records naming the undecodable step cannot cross pytest-xdist's channel to the
    # main process (a lone surrogate); this test reads the order from a file, not the log.
    monkeypatch.setattr(logging.getLogger(LOGGER), "disabled", True)
    handler = tmp_path / "h"
    out = tmp_path / "order"
    # "\udcff" is the undecodable byte 0xFF: it sorts before U+FF41 (fullwidth a) as text but
    # after it as bytes (0xFF > 0xEF); "B" < "a" bytewise but not in a locale collation.
    names = ["a", "B", "9c", "20b", "10a", "\uff41", "\udcff"]
    for name in names:
        script(handler, name, f'printf "%s\\n" "$(basename "$0")" >> "{out}"')
    runner = StepRunner(base_env=runner_env())
    result = await run(runner, handler)
    assert result.ok, result.error
    expected = ["10a", "20b", "9c", "B", "a", "\uff41", "\udcff"]
    assert [s.name for s in result.steps] == expected
    lines = out.read_bytes().split(b"\n")[:-1]
    assert lines == [os.fsencode(n) for n in expected]


def test_list_steps_names_hidden_and_backups_and_skips_the_unrunnable(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    for name in [".hidden", "10a~", "11a.swp", "12a.orig", "13a.rej", "14a.dpkg-old",
                 "15a.dpkg-dist", "16a.rpmnew", "17a.rpmsave"]:  # fmt: skip
        script(handler, name, "exit 0")
    script(handler, "20run", "exit 0")
    script(handler, "30noexec", "exit 0", mode=0o644)
    (handler / "40dir").mkdir()
    target = script(tmp_path, "target", "exit 0")
    (handler / "50link").symlink_to(target)
    (handler / "60dangling").symlink_to(tmp_path / "missing")
    (handler / "70dirlink").symlink_to(tmp_path)
    steps, skipped = list_steps(handler)
    assert [(s.name, s.path) for s in steps] == [
        ("20run", handler / "20run"),
        ("50link", handler / "50link"),
    ]
    assert skipped == [
        SkippedEntry(".hidden", "a hidden name (leading .)"),
        SkippedEntry("10a~", "an editor backup (*~)"),
        SkippedEntry("11a.swp", "an editor swap file (*.swp)"),
        SkippedEntry("12a.orig", "a backup left by patch or a merge tool (*.orig)"),
        SkippedEntry("13a.rej", "the rejected hunks of a patch (*.rej)"),
        SkippedEntry("14a.dpkg-old", "a package manager's copy (*.dpkg-*)"),
        SkippedEntry("15a.dpkg-dist", "a package manager's copy (*.dpkg-*)"),
        SkippedEntry("16a.rpmnew", "a package manager's copy (*.rpmnew)"),
        SkippedEntry("17a.rpmsave", "a package manager's copy (*.rpmsave)"),
        SkippedEntry("30noexec", "not executable"),
        SkippedEntry("40dir", "is a directory"),
        SkippedEntry("60dangling", "dangling symlink"),
        SkippedEntry("70dirlink", "is a directory"),
    ]
    assert [entry.name for entry in skipped if entry.passed_over] == [e.name for e in skipped[:9]]


@pytest.mark.parametrize("make", ["missing", "file"])
def test_list_steps_raises_when_the_directory_cannot_be_listed(tmp_path: Path, make: str) -> None:
    target = tmp_path / "h"
    if make == "file":
        target.write_text("")
    with pytest.raises(FileNotFoundError if make == "missing" else NotADirectoryError):
        list_steps(target)


# --- running -------------------------------------------------------------------------------


async def test_only_runnable_steps_run_and_the_others_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    marks = tmp_path / "marks"
    marks.mkdir()
    body = f'touch "{marks}/$(basename "$0")"'
    for name in [".hidden", "10a~", "11a.swp", "14a.dpkg-old", "20run"]:
        script(handler, name, body)
    script(handler, "30noexec", body, mode=0o644)
    (handler / "40dir").mkdir()
    (handler / "50link").symlink_to(script(tmp_path, "target", body))
    (handler / "60dangling").symlink_to(tmp_path / "missing")
    result = await run(StepRunner(base_env=runner_env()), handler)
    assert result.ok, result.error
    assert [(s.name, s.status, s.skipped) for s in result.steps] == [
        ("20run", 0, None),
        ("30noexec", None, "not executable"),
        ("50link", 0, None),
        ("60dangling", None, "dangling symlink"),
    ]
    # $0 is the link's name when the step runs through it.
    assert sorted(p.name for p in marks.iterdir()) == ["20run", "50link"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "passing over" not in r.getMessage()
    ]
    assert warnings == [
        f"{TAG} skipping step 30noexec of handler {handler}: not executable",
        f"{TAG} skipping step 60dangling of handler {handler}: dangling symlink",
    ]


@pytest.mark.parametrize(
    "payload",
    [b'{"module": "traefik1", "node": 1}', b"cluster/acls", bytes(range(256)) * 3, b""],
    ids=["json", "plain-string", "binary", "empty"],
)
async def test_each_step_gets_the_raw_payload_on_stdin(tmp_path: Path, payload: bytes) -> None:
    handler = tmp_path / "h"
    script(handler, "10first", f'cat > "{tmp_path}/first"')
    script(handler, "20second", f'cat > "{tmp_path}/second"')
    result = await run(StepRunner(base_env=runner_env()), handler, payload=payload)
    assert result.ok, result.error
    assert (tmp_path / "first").read_bytes() == payload
    assert (tmp_path / "second").read_bytes() == payload


async def test_environment_precedence_and_state_dir_as_cwd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "environment").write_text(
        "# a comment=ignored\n\nFILE_ONLY=file\nBOTH=file\nROUTE=file\n"
        "AGENT_EVENT_SOURCE=file\nnot a pair\nWITH_EQ=a=b\n"
    )
    base = runner_env(
        AGENT_STATE_DIR=str(state),
        BASE_ONLY="base",
        BOTH="base",
        ROUTE="base",
        AGENT_EVENT_NAME="base",
        AGENT_COMFD="9",
    )
    handler = tmp_path / "h"
    names = "BASE_ONLY FILE_ONLY BOTH ROUTE WITH_EQ AGENT_EVENT_NAME AGENT_EVENT_SOURCE AGENT_COMFD"
    script(handler, "10env", f'for v in {names}; do eval "echo $v=\\$$v"; done > out; pwd >> out')
    route_env = {"ROUTE": "route", "AGENT_EVENT_NAME": "route"}
    result = await run(StepRunner(base_env=base), handler, env=route_env)
    assert result.ok, result.error
    assert (state / "out").read_text().splitlines() == [
        "BASE_ONLY=base",
        "FILE_ONLY=file",
        "BOTH=file",
        "ROUTE=route",
        "WITH_EQ=a=b",
        "AGENT_EVENT_NAME=e1",
        "AGENT_EVENT_SOURCE=cluster",
        "AGENT_COMFD=2",
        str(state),
    ]


async def test_environment_file_is_reread_for_every_step(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "environment").write_text("COLOR=red\n")
    handler = tmp_path / "h"
    script(handler, "10set", 'echo "$COLOR" > seen1; echo COLOR=blue >> environment')
    script(handler, "20get", 'echo "$COLOR" > seen2')
    runner = StepRunner(base_env=runner_env(AGENT_STATE_DIR=str(state)))
    result = await run(runner, handler)
    assert result.ok, result.error
    assert (state / "seen1").read_text() == "red\n"
    assert (state / "seen2").read_text() == "blue\n"


async def test_without_state_dir_steps_run_in_the_routers_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "environment").write_text("FROM_CWD=yes\n")
    monkeypatch.chdir(here)
    handler = tmp_path / "h"
    script(handler, "10pwd", 'pwd > out; echo "$FROM_CWD" >> out')
    # A relative handler path must still work although the step runs elsewhere.
    result = await run(StepRunner(base_env=runner_env()), Path("..") / "h")
    assert result.ok, result.error
    assert (here / "out").read_text().splitlines() == [str(here), "yes"]


async def test_a_step_may_remove_or_disable_later_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    script(handler, "10update", f'rm "{handler}/20gone"; chmod -x "{handler}/30disabled"')
    script(handler, "20gone", f'touch "{tmp_path}/gone-ran"')
    script(handler, "30disabled", f'touch "{tmp_path}/disabled-ran"')
    script(handler, "40last", f'touch "{tmp_path}/last-ran"')
    result = await run(StepRunner(base_env=runner_env()), handler)
    assert result.ok, result.error
    assert result.steps == (
        StepResult("10update", 0),
        StepResult("20gone", None, skipped="vanished"),
        StepResult("30disabled", None, skipped="not executable"),
        StepResult("40last", 0),
    )
    assert not (tmp_path / "gone-ran").exists()
    assert not (tmp_path / "disabled-ran").exists()
    assert (tmp_path / "last-ran").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{TAG} skipping step 20gone of handler {handler}: vanished" in warnings


async def test_a_failing_step_aborts_the_handler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    script(handler, "10ok", "echo fine")
    script(
        handler, "20fail", 'i=1; while [ $i -le 25 ]; do echo "line $i"; i=$((i+1)); done; exit 3'
    )
    script(handler, "30never", f'touch "{tmp_path}/never"')
    result = await run(StepRunner(base_env=runner_env()), handler)
    assert not result.ok
    assert result.steps == (StepResult("10ok", 0), StepResult("20fail", 3))
    assert result.error == f"step 20fail of handler {handler} failed: exit status 3"
    assert result.tail == tuple(f"line {i}" for i in range(6, 26))
    assert not (tmp_path / "never").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{TAG} step 20fail of handler {handler} failed: exit status 3"]


async def test_a_missing_handler_directory_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = await run(StepRunner(base_env=runner_env()), tmp_path / "nope")
    assert not result.ok
    assert result.steps == ()
    assert result.error is not None
    assert result.error.startswith(f"handler directory {tmp_path / 'nope'}: ")
    assert any(r.levelno == logging.ERROR and TAG in r.getMessage() for r in caplog.records)


# --- timeouts and termination ---------------------------------------------------------------


async def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    pidfile = tmp_path / "child.pid"
    script(handler, "10slow", f'sleep 1000 & echo $! > "{pidfile}"; sleep 1000')
    script(handler, "20never", f'touch "{tmp_path}/never"')
    runner = StepRunner(kill_grace=2, base_env=runner_env())
    started = time.monotonic()
    result = await run(runner, handler, timeout=0.5)
    assert time.monotonic() - started < 3
    assert not result.ok
    assert result.steps == (StepResult("10slow", -signal.SIGTERM, timed_out=True),)
    assert result.error == f"step 10slow of handler {handler} failed: timed out after 0.5s"
    assert not (tmp_path / "never").exists()
    grandchild = int(pidfile.read_text())
    assert await wait_until(lambda: not alive(grandchild)), "background child survived"
    assert runner.running == 0
    assert any("timed out after 0.5s" in r.getMessage() for r in caplog.records)


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    script(handler, "10stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    runner = StepRunner(kill_grace=0.3, base_env=runner_env())
    result = await run(runner, handler, timeout=0.3)
    assert result.steps == (StepResult("10stubborn", -signal.SIGKILL, timed_out=True),)
    assert result.tail == ("ready",)


async def test_terminate_all_stops_running_steps(tmp_path: Path) -> None:
    polite = tmp_path / "polite"
    stubborn = tmp_path / "stubborn"
    script(polite, "10sleep", "sleep 1000")
    script(stubborn, "10sleep", "trap '' TERM; while :; do sleep 0.05; done")
    runner = StepRunner(kill_grace=0.3, base_env=runner_env())
    tasks = [asyncio.create_task(run(runner, d)) for d in (polite, stubborn)]
    assert await wait_until(lambda: runner.running == 2)
    assert await runner.terminate_all() == 2
    first, second = await asyncio.gather(*tasks)
    assert first.steps == (StepResult("10sleep", -signal.SIGTERM),)
    assert second.steps == (StepResult("10sleep", -signal.SIGKILL),)
    assert not first.ok and not second.ok
    assert runner.running == 0
    # Once stopping, no new step starts.
    late = await run(runner, polite)
    assert not late.ok
    assert late.steps == (StepResult("10sleep", None),)


async def test_a_background_child_holding_the_output_does_not_hang_the_handler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    pidfile = tmp_path / "bg.pid"
    script(handler, "10daemonize", f'sleep 30 & echo $! > "{pidfile}"; echo started')
    script(handler, "20next", "echo next")
    try:
        started = time.monotonic()
        result = await run(StepRunner(base_env=runner_env()), handler)
        assert time.monotonic() - started < 5
        assert result.ok, result.error
        assert [text_of(r, "10daemonize") for r in step_messages(caplog, "10daemonize")] == [
            "started"
        ]
        assert any("holds its output open" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


# --- output relay ---------------------------------------------------------------------------


async def test_syslog_prefix_sets_the_level_and_is_stripped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    script(
        handler,
        "10say",
        "echo '<3>broken'; echo '<4>careful' >&2; echo '<6>fyi'; echo '<7>noise'; "
        "echo plain; echo '<9>not a priority'; echo '<0>emergency' >&2",
    )
    result = await run(StepRunner(base_env=runner_env()), handler)
    assert result.ok, result.error
    seen = {text_of(r, "10say"): r.levelno for r in step_messages(caplog, "10say")}
    assert seen == {
        "broken": logging.ERROR,
        "careful": logging.WARNING,
        "fyi": logging.INFO,
        "noise": logging.DEBUG,
        "plain": logging.INFO,
        "<9>not a priority": logging.INFO,
        "emergency": logging.ERROR,
    }


async def test_binary_garbage_cannot_corrupt_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    script(handler, "10garbage", r"printf 'a\000b\033[31mred\377\376\tx\r\nnext\rline\n'")
    result = await run(StepRunner(base_env=runner_env()), handler)
    assert result.ok, result.error
    texts = [text_of(r, "10garbage") for r in step_messages(caplog, "10garbage")]
    assert texts == ["a\\x00b\\x1b[31mred\ufffd\ufffd\tx", "next\\x0dline"]
    for text in texts:
        assert all(c == "\t" or unicodedata.category(c) != "Cc" for c in text)


async def test_long_lines_are_cut_at_character_boundaries_and_keep_their_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    script(handler, "10long", r"printf '<3>aaaaa<7>bbbbbccc\nplain\n1234567\303\251\n'")
    result = await run(StepRunner(max_line=8, base_env=runner_env()), handler)
    assert result.ok, result.error
    seen = [(text_of(r, "10long"), r.levelno) for r in step_messages(caplog, "10long")]
    assert seen == [
        ("aaaaa", logging.ERROR),
        ("<7>bbbbb", logging.ERROR),  # a continuation piece has no priority of its own
        ("ccc", logging.ERROR),
        ("plain", logging.INFO),
        ("1234567", logging.INFO),  # cut before the two-byte "é", not through it
        ("\u00e9", logging.INFO),
    ]


async def test_a_huge_line_is_logged_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 5_000_000
    handler = tmp_path / "h"
    script(handler, "10flood", f"head -c {size} /dev/zero | tr '\\0' x; echo; echo '<3>after'")
    lengths: list[int] = []
    levels: list[int] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(f"{TAG} step 10flood: "):
                lengths.append(len(text_of(record, "10flood")))
                levels.append(record.levelno)

    logger = logging.getLogger(LOGGER)
    # Keep the 5 MB of records out of pytest's capture so memory measures the runner alone.
    monkeypatch.setattr(logger, "propagate", False)
    counter = Count()
    logger.addHandler(counter)
    tracemalloc.start()
    try:
        result = await run(StepRunner(max_line=16384, base_env=runner_env()), handler)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logger.removeHandler(counter)
    assert result.ok, result.error
    assert max(lengths) == 16384
    assert sum(lengths) == size + len("after")
    assert len(lengths) == -(-size // 16384) + 1
    # The last piece is its own line, and the flood's INFO level did not leak into it.
    assert levels[-1] == logging.ERROR
    assert peak < 2_500_000, f"peak traced memory {peak} bytes for a {size}-byte line"


async def test_a_step_that_ignores_a_large_payload_does_not_hang(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    script(handler, "10ignore", "echo not reading")
    script(handler, "20count", f'wc -c > "{tmp_path}/count"')
    script(handler, "30slowignore", "sleep 0.2")
    payload = b"x" * (1024 * 1024)
    result = await run(StepRunner(base_env=runner_env()), handler, payload=payload)
    assert result.ok, result.error
    assert (tmp_path / "count").read_text().strip() == str(len(payload))


# --- concurrency ----------------------------------------------------------------------------


async def test_the_concurrency_cap_bounds_running_steps(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    handlers = []
    for i in range(4):
        handler = tmp_path / f"h{i}"
        script(
            handler,
            "10work",
            f'date +%s.%N > "{stamps}/{i}"; sleep 0.5; date +%s.%N >> "{stamps}/{i}"',
        )
        handlers.append(handler)
    runner = StepRunner(max_concurrency=2, base_env=runner_env())
    results = await asyncio.gather(*(run(runner, h) for h in handlers))
    assert all(r.ok for r in results)
    events: list[tuple[float, int]] = []
    for path in stamps.iterdir():
        start, end = (float(x) for x in path.read_text().split())
        events += [(start, 1), (end, -1)]
    overlap = peak = 0
    for _, delta in sorted(events):
        overlap += delta
        peak = max(peak, overlap)
    assert peak == 2
