"""The state folder: one router each, private, no symlink followed, no server left behind.

The real CLI in a subprocess with the embedded server; the journal file on real files."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import redis

from eventrouter.redis.embedded import EmbeddedServer
from eventrouter.runtime.journal import FileJournal, JournalError
from eventrouter.runtime.statedir import RouterLock, StateDirError, prepare
from tests.routerproc import Router, clean_env, run_cli, wait_for
from tests.test_journal import failure as sample_failure


def _server_pid(sock: Path) -> int:
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_second_router_on_the_same_state_folder_refuses_to_start(
    tmp_path: Path, short_tmp: Path
) -> None:
    state = short_tmp / "state"
    first = Router(["run", "--state-dir", str(state)], tmp_path / "log", clean_env())
    try:
        first.ready()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        server = _server_pid(state / "redis.sock")
        second = run_cli("run", "--state-dir", str(state), timeout=20)
        assert second.returncode == 1
        assert f"another eventrouter (pid {first.proc.pid}) is running" in second.stderr
        assert _server_pid(state / "redis.sock") == server  # left alone, not replaced
        assert first.proc.poll() is None
        assert first.stop() == 0
    finally:
        first.kill()


@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "socket-only"])
def test_a_server_left_by_a_killed_router_is_stopped_at_the_next_start(
    tmp_path: Path, short_tmp: Path, pid_file: bool
) -> None:
    state = short_tmp / "state"
    # What a router killed before the warden existed (or with it killed too) leaves behind.
    leftover = EmbeddedServer(state)
    leftover.start()
    old = _server_pid(leftover.socket)
    if not pid_file:
        leftover.pidfile.unlink()
    router = Router(["run", "--state-dir", str(state)], tmp_path / "log", clean_env())
    try:
        log = router.ready().log
        assert "was left by a router that did not stop; stopping it" in log
        assert not _alive(old)
        new = _server_pid(state / "redis.sock")
        assert new != old
        assert int((state / "redis.pid").read_text()) == new
        assert router.stop() == 0
        assert not _alive(new)
    finally:
        router.kill()
        leftover.stop()  # a no-op once the router stopped it


def test_a_state_folder_writable_by_others_is_refused_with_the_fix(short_tmp: Path) -> None:
    state = short_tmp / "state"
    state.mkdir()
    state.chmod(0o777)
    done = run_cli("run", "--state-dir", str(state), timeout=20)
    assert done.returncode == 1
    assert f"writable by group or others (mode 0777); fix: chmod go-w {state}" in done.stderr
    assert not (state / "redis.sock").exists()  # nothing started


def test_prepare_creates_the_folder_private_and_refuses_a_symlink(tmp_path: Path) -> None:
    assert stat.S_IMODE(prepare(tmp_path / "a" / "state").stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(tmp_path / "a" / "state")
    with pytest.raises(StateDirError, match="is a symlink"):
        prepare(tmp_path / "link")


def test_the_lock_is_not_taken_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / "router.lock").symlink_to(target)
    with pytest.raises(OSError):
        RouterLock(tmp_path).acquire()
    assert target.read_text() == "precious\n"


def test_a_symlink_planted_as_the_journal_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (tmp_path / "failures.jsonl").symlink_to(secret)
    journal = FileJournal(tmp_path / "failures.jsonl", 10)
    assert asyncio.run(journal.record(sample_failure())) == ""  # refused, logged as lost
    assert secret.read_text() == "root:x:0:0\n"
    with pytest.raises(JournalError, match="cannot read"):
        asyncio.run(journal.list())


def test_a_symlink_planted_as_the_compaction_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep\n")
    (tmp_path / "failures.jsonl.tmp").symlink_to(secret)
    journal = FileJournal(tmp_path / "failures.jsonl", 1)
    for _ in range(3):  # past 2 * size lines: compacted through the temporary file
        assert asyncio.run(journal.record(sample_failure()))
    assert secret.read_text() == "keep\n"
    assert len(asyncio.run(journal.list())) == 1
    wait_for(lambda: not (tmp_path / "failures.jsonl.tmp").exists(), 1, "no temporary left")


def test_a_symlink_planted_as_the_pid_or_reload_file_is_not_followed(tmp_path: Path) -> None:
    from eventrouter.service.statefiles import PID_FILE, RESULT_FILE, StateFiles

    secret = tmp_path / "secret"
    secret.write_text("keep\n")
    (tmp_path / PID_FILE).symlink_to(secret)
    (tmp_path / f".{RESULT_FILE}.{os.getpid()}").symlink_to(secret)
    files = StateFiles(tmp_path)
    files.hold_pid()  # refused: logged, no pid file kept
    files.record(True, "reloaded: 0 routes", [])
    files.release()
    assert secret.read_text() == "keep\n"
    assert not (tmp_path / RESULT_FILE).exists()


def test_a_second_router_refuses_the_same_state_folder_with_an_external_redis(
    tmp_path: Path, short_tmp: Path, redis_url: str
) -> None:
    state = short_tmp / "state"
    args = ["run", "--redis", redis_url, "--state-dir", str(state)]
    first = Router(args, tmp_path / "log", clean_env())
    try:
        first.ready()
        second = run_cli(*args, timeout=20)
        assert second.returncode == 1
        assert f"another eventrouter (pid {first.proc.pid}) is running" in second.stderr
        assert first.stop() == 0
    finally:
        first.kill()
