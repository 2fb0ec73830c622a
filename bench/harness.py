"""The bench harness: a Redis server, the real router in a subprocess, and the table.

Shared by the benchmarks of ``traffic``, ``modes`` and ``scale``; ``run`` drives them.
"""

from __future__ import annotations

import contextlib
import math
import os
import pstats
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from eventrouter.redis.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent
READY = r"subscribed to (\d+) pattern"
POLL = 0.001  # seconds between polls of a file the router or a step writes
STOP_WAIT = 40.0  # the router's own --stop-timeout is 30 s
# What the cumulative profile shows: the router, redis-py, Jinja2, PyYAML, logging and asyncio's
# subprocess code; the event loop's and runpy's wrappers would fill the list with 100 % entries.
PROFILED_CODE = r"eventrouter/|redis/|jinja2/|yaml/|voluptuous/|logging/|subprocess|unix_events"


class BenchError(Exception):
    """The router did not do what a benchmark asked within its bounded time."""


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    spawn_runs: int = 5_000
    spawn_rounds: int = 2
    floor_runs: int = 500
    latency_rate: float = 100.0
    latency_seconds: float = 5.0
    latency_rounds: int = 2
    latency_baseline: int = 200
    emit_events: int = 20_000
    modes_events: int = 5_000
    modes_keys: int = 50
    modes_rounds: int = 2
    scale_files: int = 1_000
    routes_per_file: int = 10


FULL = Sizes()
QUICK = Sizes(
    spawn_runs=1_000,
    floor_runs=100,
    latency_seconds=2.0,
    latency_baseline=100,
    emit_events=5_000,
    modes_events=1_000,
    scale_files=100,
)


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    bench: str
    metric: str
    measured: str
    target: str
    baseline: str = "-"
    ratio: str = "-"
    verdict: str = "info"
    #: The daemon measured (``Daemon.label``): several in one run with --peer or compare.py.
    who: str = ""


#: The floor's command line: bench/floor.py on the benchmark's events folder.
FLOOR_CMD = "{python} " + shlex.quote(str(REPO / "bench" / "floor.py")) + " {redis} {events}"


@dataclass(frozen=True)
class Daemon:
    """One daemon the benchmarks start: an eventrouter install, or a command line.

    ``command`` is None for eventrouter (``python -m eventrouter run`` with ``python``); else
    it is a command line with fields (bench/README.md "Side by side"), as --daemon takes it.
    """

    label: str
    python: str = sys.executable
    #: The checkout whose shipped examples this daemon runs on.
    home: Path = REPO
    #: Where its processes start: an installed commit's must not import the tree's package.
    cwd: Path = REPO
    command: str | None = None

    @property
    def router(self) -> bool:
        """Return True for an eventrouter install (it reads route files)."""
        return self.command is None

    @property
    def examples(self) -> Path:
        """Return the shipped NS8 examples of this daemon's checkout."""
        return self.home / "examples" / "ns8-cluster"


FLOOR = Daemon("floor", command=FLOOR_CMD)


@dataclass
class Context:
    """What every benchmark shares: the temp folder, the server, the sizes, the notes."""

    tmp: Path
    redis_url: str
    sizes: Sizes
    profile: bool
    notes: list[str] = field(default_factory=list)
    #: What the benchmarks measure: eventrouter (one install, or two with compare.py), or
    #: another daemon (--daemon) in its place.
    subjects: tuple[Daemon, ...] = (Daemon("router"),)
    #: Another daemon measured beside them where handlers are an events folder (--peer).
    peer: Daemon | None = None

    @property
    def routers(self) -> tuple[Daemon, ...]:
        """Return the subjects that are eventrouter installs."""
        return tuple(d for d in self.subjects if d.router)

    def folder_daemons(self) -> tuple[Daemon, ...]:
        """Return every daemon that runs an events folder: subjects, the floor, the peer."""
        peer = (self.peer,) if self.peer is not None else ()
        return (*self.subjects, FLOOR, *peer)


def verdict(ok: bool) -> str:
    """Return PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def daemon_env(ctx: Context, who: Daemon, **extra: str) -> dict[str, str]:
    """Return ``clean_env`` plus a state folder of the daemon's own in the temp folder.

    The default state folder is shared by every router of the user (root's is
    /run/eventrouter): a router started elsewhere on the machine must not hold its lock.
    """
    state = ctx.tmp / "state" / who.label
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    return clean_env(EVENTROUTER_STATE_DIR=str(state), **extra)


def clean_env(**extra: str) -> dict[str, str]:
    """Return our environment without Redis/NS8/router settings, plus ``extra``."""
    prefixes = ("REDIS_", "AGENT_", "EVENTROUTER_", "NOTIFY_SOCKET", "JOURNAL_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(extra)
    return env


def step_env(channel: str, **extra: str) -> dict[str, str]:
    """Return the environment the router gives a step for ``channel``, for baselines.

    README "Handler folders" says what it holds.
    """
    source, _, name = channel.partition("/event/")
    env = clean_env(**extra)
    env.update(AGENT_EVENT_NAME=name, AGENT_EVENT_SOURCE=source, AGENT_COMFD="2")
    return env


def write_file(path: Path, text: str, *, executable: bool = False) -> Path:
    """Write ``text`` to ``path`` (parents created); make it executable when asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)
    return path


def count_lines(path: Path) -> int:
    """Return how many complete lines ``path`` holds (0 when it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_lines(path: Path, lines: int, timeout: float) -> float:
    """Poll until ``path`` holds ``lines`` lines; return perf_counter() at that moment."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        have = count_lines(path)
        if have >= lines:
            return now
        if now > deadline:
            raise BenchError(f"only {have} of {lines} step runs recorded after {timeout:g}s")
        time.sleep(POLL)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def eventrouter_cmd(
    ctx: Context, name: str, args: Sequence[str], who: Daemon | None = None
) -> list[str]:
    """Return the command line of the real CLI, under cProfile with ``--profile``."""
    cmd = [(who or ctx.subjects[0]).python]
    if ctx.profile:
        cmd += ["-m", "cProfile", "-o", str(ctx.tmp / f"{name}.prof")]
    return [*cmd, "-m", "eventrouter", *args]


def daemon_cmd(ctx: Context, who: Daemon, events: Path, routes: Path | None) -> list[str]:
    """Return a command-line daemon's command with its fields filled (bench/README.md)."""
    assert who.command is not None
    fields = {
        "redis": ctx.redis_url,
        # host:port, as REDIS_ADDRESS holds it (NS8's agent); the socket path without --port.
        "address": ctx.redis_url.removeprefix("redis://").removeprefix("unix://"),
        "events": str(events),
        "routes": str(routes or ""),
        "python": who.python,
    }
    return [part.format(**fields) for part in shlex.split(who.command)]


def proc_cpu(pid: int) -> float:
    """Return the user + system CPU seconds of process ``pid`` (all its threads, no children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_profile(ctx: Context, name: str) -> None:
    """Print the functions that dominate a profiled router or CLI run."""
    path = ctx.tmp / f"{name}.prof"
    if not ctx.profile or not path.exists():
        return
    print(f"\n--- cProfile of {name} (main thread), by own time ---", flush=True)
    stats = pstats.Stats(str(path), stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(14)
    print(f"--- cProfile of {name}, by cumulative time (router, redis, jinja2, logging) ---")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("cumulative").print_stats(
        PROFILED_CODE, 24
    )


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Return a memory figure of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


class Router:
    """The real ``eventrouter run`` in a subprocess, with its log in a file."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        level: str,
        *,
        events: Path | None = None,
        who: Daemon | None = None,
    ) -> None:
        who = who or ctx.subjects[0]
        self.name = name
        self.who = who
        self.log_path = ctx.tmp / f"{name}.log"
        self._log_out = self.log_path.open("wb")
        self._log_in = self.log_path.open("rb")
        self.text = ""
        cli = ["--log-level", level, "run", "--redis", ctx.redis_url, *args]
        if not who.router:  # another daemon, on the same events folder
            if events is None:
                raise BenchError(f"{name}: needs eventrouter's routes; {who.label} cannot run it")
            cmd = daemon_cmd(ctx, who, events, None)
        else:
            cmd = eventrouter_cmd(ctx, name, cli, who)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=who.cwd,
        )

    def read_log(self) -> str:
        """Return everything the router logged so far."""
        if not self._log_in.closed:
            self.text += self._log_in.read().decode("utf-8", "replace")
        return self.text

    def wait_log(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """Poll the log for ``pattern`` after offset ``since``; return its match."""
        regex = re.compile(pattern)
        deadline = time.perf_counter() + timeout
        while True:
            found = regex.search(self.read_log(), since)
            if found:
                return found
            if self.proc.poll() is not None:
                tail = " | ".join(self.text.strip().splitlines()[-3:])
                raise BenchError(f"router {self.name} exited ({self.proc.returncode}): {tail}")
            if time.perf_counter() > deadline:
                raise BenchError(f"router {self.name}: no {pattern!r} after {timeout:g}s")
            time.sleep(POLL)

    def error_lines(self) -> list[str]:
        """Return the ERROR lines of the log."""
        return [line for line in self.read_log().splitlines() if " ERROR " in line]

    def stop(self) -> None:
        """SIGTERM the router and reap it (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_out.close()
        self.read_log()
        self._log_in.close()


def wait_patterns(
    url: str, done: Callable[[int], bool], timeout: float, router: Router | None = None
) -> None:
    """Poll PUBSUB NUMPAT until ``done`` accepts it (the router's is then the only pattern)."""
    client = redis.Redis.from_url(url)
    deadline = time.perf_counter() + timeout
    try:
        while not done(int(client.pubsub_numpat())):
            if router is not None and router.proc.poll() is not None:
                raise BenchError(f"router {router.name} exited ({router.proc.returncode})")
            if time.perf_counter() > deadline:
                raise BenchError(f"PUBSUB NUMPAT not as expected after {timeout:g}s")
            time.sleep(POLL)
    finally:
        client.close()


@contextlib.contextmanager
def running_router(
    ctx: Context,
    name: str,
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    level: str = "INFO",
    ready_timeout: float = 30.0,
    events: Path | None = None,
    who: Daemon | None = None,
) -> Iterator[Router]:
    """Start a router, wait until it has subscribed, yield it; always stop it afterwards.

    ``events`` is the events folder the benchmark's routes use as their handler convention:
    what a command-line daemon (the floor, --daemon, --peer) is started on instead. ``who``
    is the daemon to start, the first subject by default.
    """
    who = who or ctx.subjects[0]
    quiet = level not in ("DEBUG", "INFO") or not who.router
    if quiet:
        wait_patterns(ctx.redis_url, lambda n: n == 0, 5.0)
    env = daemon_env(ctx, who, **(env or {}))
    router = Router(ctx, name, args, env, level, events=events, who=who)
    try:
        if quiet:  # the 'subscribed' line is at INFO: ask the server instead
            wait_patterns(ctx.redis_url, lambda n: n > 0, ready_timeout, router)
        else:
            router.wait_log(READY, ready_timeout)
        yield router
    finally:
        router.stop()
        errors = router.error_lines()
        if errors:
            ctx.notes.append(
                f"{name}: the router logged {len(errors)} ERROR line(s); first: {errors[0]}"
            )
        print_profile(ctx, name)


#: Imports every module of the installed eventrouter, whatever its layout or module names.
WARM_CODE = """
import contextlib, importlib, pkgutil, eventrouter
for found in pkgutil.walk_packages(eventrouter.__path__, "eventrouter."):
    if not found.name.endswith("__main__"):  # that one runs the command line
        with contextlib.suppress(Exception):
            importlib.import_module(found.name)
import asyncio.subprocess
"""


def cache_bytecode(prefix: Path, daemons: Sequence[Daemon]) -> None:
    """Let every process started from here cache bytecode under ``prefix``, and fill it.

    An installed package has its bytecode compiled (pip does it at install); a development
    machine may set PYTHONDONTWRITEBYTECODE, and then every start would compile the router's
    modules from source again. The cache lives in the temp folder, not in the repository.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    env = dict(os.environ, PYTHONPATH=str(REPO / "bench"))
    for who in (FLOOR, *daemons):
        if who.router or who is FLOOR:
            code = WARM_CODE if who.router else "import floor"
            subprocess.run([who.python, "-c", code], check=True, cwd=who.cwd, env=env)
        if who.router:
            subprocess.run([who.python, "-m", "eventrouter", "--help"], check=True, cwd=who.cwd,
                           stdout=subprocess.DEVNULL)  # fmt: skip


@contextlib.contextmanager
def started(
    sizes: Sizes,
    profile: bool,
    keep: bool,
    *,
    subjects: Sequence[Daemon] = (Daemon("router"),),
    port: int | None = None,
    peer: Daemon | None = None,
) -> Iterator[Context]:
    """Start a Redis server on a Unix socket in a temp folder; clean everything up after."""
    tmp = Path(tempfile.mkdtemp(prefix="erb-", dir="/tmp"))  # short: a socket path <= 107 bytes
    cache_bytecode(tmp / "pycache", subjects)
    server = EmbeddedServer(tmp / "redis", port=port)
    try:
        server.start()
        yield Context(tmp, server.url, sizes, profile, subjects=tuple(subjects), peer=peer)
    finally:
        server.stop()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
