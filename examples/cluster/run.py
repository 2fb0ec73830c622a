"""A three-node NS8-like cluster on loopback, to watch cluster-level reactions: `make cluster`.

Starts three Redis-compatible servers (the embedded server binary: node 1 the master, nodes
2 and 3 ``--replicaof`` it), a stand-in NS8 agent ``module/mail1`` on the master, and one
router per node on examples/ns8-cluster, each reading its own server and publishing to the
master. Prints what to publish; Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from eventrouter.redis.binaries import find_server_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXAMPLE = REPO / "examples" / "ns8-cluster"
NODES = (1, 2, 3)


def free_port() -> int:
    """Return a loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(port: int, within: float = 10.0) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"no server on port {port} after {within:g}s")


def relay(proc: subprocess.Popen[str], label: str) -> None:
    """Copy a child's output to ours, each line prefixed with ``label``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"{label} {line}")
        sys.stdout.flush()


class Cluster:
    """The servers, the agent and the routers, stopped in reverse order."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary, self.root = binary, root
        self.ports = {number: free_port() for number in NODES}
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []

    def url(self, number: int) -> str:
        return f"redis://127.0.0.1:{self.ports[number]}"

    def spawn(self, label: str, args: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        self.procs.append((label, proc))
        threading.Thread(target=relay, args=(proc, label), daemon=True).start()

    def start_servers(self) -> None:
        for number in NODES:
            folder = self.root / f"node{number}"
            folder.mkdir()
            replica = [] if number == 1 else ["--replicaof", "127.0.0.1", str(self.ports[1])]
            self.spawn(
                f"[redis {number}]",
                [str(self.binary), "--port", str(self.ports[number]), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(folder),
                 "--loglevel", "warning", *replica],
            )  # fmt: skip
            wait_until_up(self.ports[number])

    def start_agent(self) -> None:
        self.spawn(
            "[agent module/mail1]",
            [sys.executable, str(HERE / "ns8agent.py"), "--redis", self.url(1),
             "--agent", "module/mail1", "--actions", str(HERE / "actions")],
        )  # fmt: skip

    def start_routers(self) -> None:
        for number in NODES:
            env = {**os.environ, "EVENTROUTER_STATE_DIR": str(self.root / f"node{number}")}
            for name in ("REDIS_ADDRESS", "REDIS_REPLICA_ADDRESS", "NODE_ID", "AGENT_ID"):
                env.pop(name, None)
            self.spawn(
                f"[router {number}]",
                [sys.executable, "-m", "eventrouter", "run",
                 "--redis", self.url(number), "--publish-redis", self.url(1),
                 "--routes", str(EXAMPLE / "routes.d"), "--events-dir", str(EXAMPLE / "events"),
                 "--node", str(number), "--instance", f"node{number}"],
                env,
            )  # fmt: skip

    def stop(self) -> None:
        """Stop the routers, then the agent, then the servers the routers still talk to."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def instructions(cluster: Cluster) -> str:
    """Return what to publish, and which router should react."""
    publish = f"{sys.executable} -m eventrouter publish --redis {cluster.url(1)}"
    return f"""
Three nodes are up: node 1 (master) {cluster.url(1)}, nodes 2 and 3 replicas of it.
Publish on the master from another terminal:

  # only node 2's router cleans up (when: payload.node == router.node)
  {publish} cluster/event/module-removed '{{"module": "traefik2", "node": 2}}'
  # only the leader's router (node 1) reports (runs_on: leader)
  {publish} node/2/event/backup-status-changed \\
      '{{"node_id": 2, "backup_id": 3, "module_id": "mail1"}}'
  # node 1's router asks module/mail1 to reload its certificate (task:)
  {publish} module/traefik1/event/certificate-changed '{{"domain": "mail.example.org"}}'
  # only the leader's router (node 1) announces module-domain-changed, once (runs_on: leader)
  {publish} cluster/event/module-added '{{"module": "traefik1", "node": 1}}'

Ctrl-C stops everything.
"""


def main() -> int:
    """Start the cluster, print what to publish, stop it all on Ctrl-C."""
    binary = find_server_binary()
    if binary is None:
        print("no redis-server/valkey-server found (docs/operating.md)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="eventrouter-cluster-"))
    cluster = Cluster(binary, root)
    try:
        cluster.start_servers()
        cluster.start_agent()
        cluster.start_routers()
        time.sleep(1.0)  # let the routers say they are subscribed before the instructions
        print(instructions(cluster), flush=True)
        while all(proc.poll() is None for _, proc in cluster.procs):
            time.sleep(0.5)
        print("a process of the cluster exited; stopping", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the routers, the agent and the servers", flush=True)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    sys.exit(main())
