"""Three nodes on loopback: a master, two replicas, one router per node reading its own server
and publishing to the master, as in an NS8 cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventrouter.redis.embedded import find_server_binary
from eventrouter.redis.role import RoleWatch
from tests.cluster import Node, Topology
from tests.conftest import _missing
from tests.routerproc import Router, clean_env, lines, wait_for, write_routes, write_step


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Start a master and two replicas; stop them afterwards."""
    binary = find_server_binary()
    if binary is None:
        _missing("redis-server/valkey-server")
    cluster = Topology(binary)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class NodeRouters:
    """One router per node, each with its own routes folder, marker file and state folder."""

    def __init__(self, topology: Topology, tmp_path: Path) -> None:
        self.topology, self.tmp_path = topology, tmp_path
        self.routers: list[Router] = []

    def folder(self, node: Node) -> Path:
        return self.tmp_path / f"node{node.number}"

    def marks(self, node: Node) -> list[str]:
        """Return what the handlers of ``node``'s router wrote, one line per run."""
        return lines(self.folder(node) / "marks")

    def start(self, node: Node, routes: str) -> Router:
        """Start ``node``'s router with ``routes``; handlers append ``$MARK`` to the marks."""
        folder = self.folder(node)
        write_routes(folder / "routes.d", "10.yml", routes)
        write_step(folder / "handlers" / "mark" / "10mark", f'echo "$MARK" >> {folder}/marks')
        args = [
            "run",
            "--redis",
            node.url,
            "--publish-redis",
            self.topology.master.url,
            "--routes",
            str(folder / "routes.d"),
            "--instance",
            f"node{node.number}",
        ]
        env = clean_env(EVENTROUTER_STATE_DIR=str(folder / "state"), NODE_ID=str(node.number))
        router = Router(args, self.tmp_path / f"router{node.number}.log", env).ready()
        self.routers.append(router)
        return router

    def stop(self) -> None:
        for router in self.routers:
            router.kill()


@pytest.fixture
def routers(topology: Topology, tmp_path: Path) -> Iterator[NodeRouters]:
    """Routers for the topology's nodes, killed afterwards."""
    started = NodeRouters(topology, tmp_path)
    try:
        yield started
    finally:
        started.stop()


MARK_ADDED = """
    routes:
      - name: mark-added
        on: cluster/event/module-added
        do:
          - run: ../handlers/mark
            env: {MARK: "added {{ payload.module }}"}
"""


def test_an_event_on_the_master_is_handled_once_by_every_router(
    topology: Topology, routers: NodeRouters
) -> None:
    for node in topology.nodes:
        routers.start(node, MARK_ADDED)
    for module in ("traefik1", "mail1"):
        topology.master.client().publish(
            "cluster/event/module-added", f'{{"module": "{module}", "node": 1}}'
        )
    for node in topology.nodes:
        wait_for(lambda node=node: len(routers.marks(node)) >= 2, what=f"node {node.number}")
    for router in routers.routers:
        router.stop()
    assert [routers.marks(node) for node in topology.nodes] == [
        ["added traefik1", "added mail1"]
    ] * 3


def test_a_derived_event_from_a_replica_router_reaches_every_router(
    topology: Topology, routers: NodeRouters
) -> None:
    mark_domains = """
        routes:
          - name: mark-domains
            on: cluster/event/module-domain-changed
            do:
              - run: ../handlers/mark
                env: {MARK: "domains {{ payload.modules | join(',') }}"}
    """
    emitting = (
        mark_domains
        + """
          - name: announce-domains
            on: cluster/event/module-added
            do:
              - emit:
                  channel: cluster/event/module-domain-changed
                  payload: {modules: ["{{ payload.module }}"], domains: []}
    """
    )
    first, second, third = topology.nodes
    routers.start(first, mark_domains)
    routers.start(second, emitting)  # a replica's router: it publishes to the master
    routers.start(third, mark_domains)
    topology.master.client().publish("cluster/event/module-added", '{"module": "mail1", "node": 2}')
    for node in topology.nodes:
        wait_for(lambda node=node: routers.marks(node), what=f"node {node.number} handled it")
    for router in routers.routers:
        router.stop()
    assert [routers.marks(node) for node in topology.nodes] == [["domains mail1"]] * 3


async def test_the_role_watch_follows_a_leader_switch(topology: Topology) -> None:
    first, second, _ = topology.nodes
    watches = [RoleWatch(node.url, every=0.1) for node in (first, second)]
    tasks = [asyncio.create_task(watch.run()) for watch in watches]
    try:
        await async_wait(lambda: [w.leader for w in watches] == [True, False], "roles read")
        topology.promote(2)
        await async_wait(lambda: [w.leader for w in watches] == [False, True], "roles switched")
    finally:
        for task in tasks:
            task.cancel()
        for watch in watches:
            await watch.close()


async def async_wait(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``check`` without blocking the loop; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
