"""Drive the real ``eventrouter`` CLI in a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
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
