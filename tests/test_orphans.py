"""Nothing the router started outlives it: steps (and what they start) and the embedded
server stop when the router is killed with SIGKILL. The real CLI, real steps, /proc polled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import RedisCli
from tests.routerproc import REPO, Router, clean_env, lines, wait_for, write_routes, write_step


def _group_members(pgid: int) -> list[int]:
    """Return the pids of the live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after its ')'.
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_steps_and_their_children_die_with_a_killed_router(
    tmp_path: Path, redis_url: str, redis_cli: RedisCli
) -> None:
    pids = tmp_path / "pids"
    # Not `exec sleep`: the sleep is the step's child, which only a group kill reaches.
    write_step(tmp_path / "h" / "10sleep", f"echo $$ >> {pids}\nsleep 60\necho done")
    write_routes(
        tmp_path / "routes",
        "r.yml",
        """
        routes:
          - name: sleeper
            on: a/event/b
            mode: parallel
            do: [{run: ../h}]
        """,
    )
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router(args, tmp_path / "log")
    groups: list[int] = []
    try:
        router.ready()
        # The first step starts on the loop's thread, the second (one is running) in a
        # starter thread: both ways must be covered.
        redis_cli("PUBLISH", "a/event/b", '{"n": 1}')
        wait_for(lambda: len(lines(pids)) == 1, what="the first step")
        redis_cli("PUBLISH", "a/event/b", '{"n": 2}')
        wait_for(lambda: len(lines(pids)) == 2, what="the second step")
        groups = [int(pid) for pid in lines(pids)]
        wait_for(lambda: all(len(_group_members(g)) == 2 for g in groups), what="the sleeps")
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(5)
        wait_for(
            lambda: not any(_group_members(g) for g in groups),
            timeout=5,
            what="the steps and their children to be gone",
        )
    finally:
        router.kill()
        for group in groups:
            if _group_members(group):
                os.killpg(group, signal.SIGKILL)


def test_embedded_server_dies_with_a_killed_router(tmp_path: Path, short_tmp: Path) -> None:
    state = short_tmp / "state"
    router = Router(["run", "--state-dir", str(state)], tmp_path / "log", clean_env())
    server = 0
    try:
        router.ready()
        client = redis.Redis(unix_socket_path=str(state / "redis.sock"))
        server = int(client.info("server")["process_id"])
        client.close()
        assert _alive(server)
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(5)
        wait_for(lambda: not _alive(server), timeout=8, what="the embedded server to stop")
    finally:
        router.kill()
        if server and _alive(server):
            os.kill(server, signal.SIGKILL)


def test_the_warden_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    # A stand-in for the router: starts the warden (short grace) and one stubborn group.
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from eventrouter.support.processes import WARDEN\n"
            "WARDEN.start(grace=0.3)\n"
            "proc = subprocess.Popen(['/bin/sh', '-c', sys.argv[1]], start_new_session=True)\n"
            "WARDEN.watch(proc.pid)\n"
            "time.sleep(60)\n",
            f"trap '' TERM; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; sleep 60",
        ],
        cwd=REPO,
    )
    group = 0
    try:
        group = int(wait_for(lambda: pid.exists() and pid.read_text().strip(), what="the group"))
        wait_for(lambda: len(_group_members(group)) == 2, what="its sleep")
        owner.kill()
        owner.wait(5)
        wait_for(lambda: not _group_members(group), timeout=3, what="SIGKILL after the grace")
    finally:
        owner.kill()
        if group and _group_members(group):
            os.killpg(group, signal.SIGKILL)
