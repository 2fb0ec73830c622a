"""A real multi-node topology on loopback: one master and replicas (``--replicaof``).

As in an NS8 cluster: the leader node's Redis is the master, every other node runs a replica;
routers read their node's server and write to the master.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import free_port
from tests.routerproc import REPO, clean_env, wait_for

#: The stand-in NS8 agent, shipped with the cluster example (one copy for both).
NS8AGENT = REPO / "examples" / "cluster" / "ns8agent.py"


def start_agent(url: str, agent_id: str, actions: Path) -> subprocess.Popen[bytes]:
    """Start a stand-in NS8 agent serving ``actions``; return once it is in CLIENT LIST."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(NS8AGENT),
            "--redis",
            url,
            "--agent",
            agent_id,
            "--actions",
            str(actions),
        ],
        cwd=REPO,
        env=clean_env(),
    )
    connection = redis.Redis.from_url(url)
    try:
        wait_for(
            lambda: any(c.get("name") == agent_id for c in connection.client_list()),
            what=f"agent {agent_id} connected",
        )
    finally:
        connection.close()
    return proc


@dataclass
class Node:
    """One Redis-compatible server of the topology."""

    number: int
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the node's URL."""
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """Return a client of this node's server."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def role(self) -> str:
        """Return ``master`` or ``slave``, as ROLE says."""
        value = self.client().execute_command("ROLE")[0]
        return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Topology:
    """Servers started with ``binary``: node 1 the master, the others its replicas."""

    binary: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="er-cl-")))

    def start(self) -> Topology:
        """Start the servers and wait until every replica's link to the master is up."""
        for number in range(1, self.size + 1):
            node = Node(number, free_port(), self.root / f"node{number}")
            node.directory.mkdir()
            replicaof = [] if number == 1 else ["--replicaof", "127.0.0.1", str(self.master.port)]
            node.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--port",
                    str(node.port),
                    "--bind",
                    "127.0.0.1",
                    "--repl-diskless-sync-delay",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(node.directory),
                    "--logfile",
                    str(node.directory / "redis.log"),
                    *replicaof,
                ],
            )
            self.nodes.append(node)
            wait_for(lambda node=node: self._answers(node), what=f"node {number} up")
        self.wait_linked()
        return self

    @property
    def master(self) -> Node:
        """Return the node whose server is the master."""
        return (
            self.nodes[0]
            if len(self.nodes) == 1
            else next((n for n in self.nodes if n.role() == "master"), self.nodes[0])
        )

    def wait_linked(self) -> None:
        """Wait until every replica reports its link to the master up."""
        for node in self.nodes:
            if node.role() == "master":
                continue
            wait_for(
                lambda node=node: (
                    node.client().info("replication").get("master_link_status") == "up"
                ),
                what=f"node {node.number} linked to its master",
            )

    def promote(self, number: int) -> None:
        """Make node ``number`` the master and re-point every other node to it."""
        leader = self.nodes[number - 1]
        leader.client().execute_command("REPLICAOF", "NO", "ONE")
        for node in self.nodes:
            if node is not leader:
                node.client().execute_command("REPLICAOF", "127.0.0.1", str(leader.port))
        self.wait_linked()

    def stop(self) -> None:
        """Stop every server and remove their folders."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _answers(node: Node) -> bool:
        try:
            return bool(node.client().ping())
        except (redis.ConnectionError, OSError):
            time.sleep(0.01)
            return False
