"""Drive the real ``eventrouter`` CLI: in a subprocess for end-to-end tests, or in process.

``run_cli`` starts ``python -m eventrouter``; ``run_here`` calls the same ``main()`` in the
test's own process, for every command but ``run`` (``HERE``): their behaviour is our code
given arguments, environment, folder, stdin and, for some, the test's Redis server; the
daemon, its signals and its lifetime stay a process of their own. A subprocess costs about
0.25 s of CPU under coverage; a call here, a few ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns a true value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment without any Redis or NS8 settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "AGENT_", "EVENTROUTER_", "NOTIFY_SOCKET", "JOURNAL_"))
    }
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``eventrouter`` CLI; by default with no Redis, NS8 or routes settings."""
    return subprocess.run(
        [sys.executable, "-m", "eventrouter", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


#: Commands ``run_here`` runs: every one but ``run`` (the daemon, with its signals and its
#: lifetime, is a process of its own). Those that talk to Redis talk to the test's server.
HERE = frozenset(
    {"check", "explain", "test", "routes", "schema"}
    | {"publish", "status", "history", "failures", "retry", "reload"}
)


def run_here(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI's ``main(args)`` in this process as ``run_cli`` runs it in a subprocess.

    The environment is ``env`` alone (``clean_env()`` by default) and the working folder
    ``cwd`` while it runs; stdin, stdout and stderr are strings; the status is what the
    process would exit with (argparse's ``SystemExit`` included, 1 with the traceback on
    stderr for an exception). Logging and the process state it touched are put back.
    """
    if not args or args[0] not in HERE:
        raise ValueError(f"run_here runs only {sorted(HERE)}; use run_cli for {args[:1]}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(args, env, cwd, stdin)
    # Called from a coroutine: the commands that use asyncio start a loop of their own,
    # which a thread that runs none may; the caller's loop waits, as for a subprocess.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_run_here, args, env, cwd, stdin).result()


def _run_here(
    args: tuple[str, ...], env: dict[str, str] | None, cwd: Path, stdin: str | None
) -> subprocess.CompletedProcess[str]:
    from eventrouter.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    fed = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    root = logging.getLogger()
    saved_log = (root.handlers[:], root.level, logging.logThreads, logging.logProcesses)
    saved_log += (logging.logMultiprocessing, logging._srcfile)  # type: ignore[attr-defined]
    try:
        os.environ.clear()
        os.environ.update(env if env is not None else clean_env())
        os.chdir(cwd)
        sys.stdin = fed
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exc:
                code = exc.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin = saved_stdin
        root.handlers[:], level = saved_log[0], saved_log[1]
        root.setLevel(level)
        logging.logThreads, logging.logProcesses = saved_log[2], saved_log[3]
        logging.logMultiprocessing = saved_log[4]
        logging._srcfile = saved_log[5]  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "eventrouter", *args]
    return subprocess.CompletedProcess(command, status, out.getvalue(), err.getvalue())


def lines(path: Path) -> list[str]:
    """Return the lines of a file, or [] when it does not exist yet."""
    return path.read_text().splitlines() if path.exists() else []


def write_routes(folder: Path, name: str, text: str) -> Path:
    """Write a route file (dedented) and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def handler(folder: Path) -> Path:
    """Create a handler folder with one executable step that succeeds."""
    return write_step(folder / "10step", "exit 0").parent


def write_step(path: Path, body: str) -> Path:
    """Write an executable POSIX sh step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


class Router:
    """A running ``eventrouter run`` with its log in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.handle = log.open("wb")
        env = dict(env if env is not None else clean_env())
        self.state: Path | None = None
        if "--state-dir" not in args and "EVENTROUTER_STATE_DIR" not in env:
            # A state folder of its own (short: it may hold the embedded server's socket), so
            # that routers of tests running side by side never share a lock or journal file.
            self.state = Path(tempfile.mkdtemp(prefix="er-st-", dir="/tmp"))
            env["EVENTROUTER_STATE_DIR"] = str(self.state)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventrouter", *args],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    @property
    def log(self) -> str:
        """Return everything logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) appears ``count`` times in the log; return the log."""

        def found() -> str:
            text = self.log
            if self.proc.poll() is not None and len(re.findall(pattern, text)) < count:
                raise AssertionError(f"router exited ({self.proc.returncode}):\n{text}")
            return text if len(re.findall(pattern, text)) >= count else ""

        try:
            return wait_for(found, timeout, f"{pattern!r} in the log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log}") from None

    def ready(self) -> Router:
        """Wait until the router has subscribed."""
        self.wait_log(r"subscribed to \d+ pattern")
        return self

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the router."""
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the router and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.handle.close()
            self._forget_state()

    def close(self, grace: float = 5.0) -> None:
        """Stop the router with SIGTERM; SIGKILL it if it has not exited after ``grace``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.handle.close()
        self._forget_state()

    def kill(self) -> None:
        """Kill the router if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.handle.close()
        self._forget_state()

    def _forget_state(self) -> None:
        """Remove the state folder this object made, once the router has exited."""
        if self.state is not None and self.proc.poll() is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None
