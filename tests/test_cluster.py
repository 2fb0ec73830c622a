"""Three nodes on loopback: a master, two replicas, one router per node reading its own server
and publishing to the master, as in an NS8 cluster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventrouter.redis.binaries import find_server_binary
from eventrouter.redis.role import RoleWatch
from tests.cluster import Node, Topology, start_agent
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

    def start(self, node: Node, routes: str, *extra: str) -> Router:
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
            "--log-level",
            "DEBUG",
            *extra,
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


MARK_ON_LEADER = """
    routes:
      - name: mark-on-leader
        on: cluster/event/module-added
        runs_on: leader
        do:
          - run: ../handlers/mark
            env: {MARK: "leader {{ payload.module }} on {{ router.node }}"}
"""


def publish_added(node: Node, module: str, on: int = 1) -> None:
    """Publish module-added on ``node``'s server (the master's, as NS8 does)."""
    node.client().publish("cluster/event/module-added", json.dumps({"module": module, "node": on}))


def test_a_leader_route_runs_once_on_the_master_and_follows_a_leader_switch(
    topology: Topology, routers: NodeRouters
) -> None:
    for node in topology.nodes:
        # The timer alone would take 30 s: the switch is seen through leader-changed.
        routers.start(node, MARK_ON_LEADER, "--role-interval", "30s")
    first, second, third = topology.nodes
    for module in ("a1", "a2"):
        publish_added(first, module)
    wait_for(lambda: len(routers.marks(first)) >= 2, what="the master's router ran it")
    # Each router saw both events and said why it did not act: one debug line per event.
    for number in (1, 2):
        routers.routers[number].wait_log(
            "route mark-on-leader: .*not run: runs_on: leader", count=2
        )

    topology.promote(2)
    publish_added(second, "b0")  # in the switch window: one router, both or none may act
    second.client().publish("cluster/event/leader-changed", '{"node_id": 2, "endpoint": "x"}')
    routers.routers[1].wait_log("this router is the leader")
    routers.routers[0].wait_log("this router is not the leader")
    for module in ("b1", "b2", "b3"):
        publish_added(second, module)
    wait_for(lambda: "leader b3 on 2" in routers.marks(second), what="the new leader ran b3")
    for router in routers.routers:
        router.stop()
    after = [
        [m for m in routers.marks(n) if not m.startswith(("leader a", "leader b0"))]
        for n in topology.nodes
    ]
    assert [m for m in routers.marks(first) if m.startswith("leader a")] == [
        "leader a1 on 1",
        "leader a2 on 1",
    ]
    assert after == [[], ["leader b1 on 2", "leader b2 on 2", "leader b3 on 2"], []]
    assert not [m for m in routers.marks(second) + routers.marks(third) if m.startswith("leader a")]


def test_when_payload_node_is_router_node_runs_on_that_node_only(
    topology: Topology, routers: NodeRouters
) -> None:
    routes = """
        routes:
          - name: clean-up-here
            on: cluster/event/module-removed
            when: payload.node == router.node
            do:
              - run: ../handlers/mark
                env: {MARK: "removed {{ payload.module }} here"}
    """
    for node in topology.nodes:
        routers.start(node, routes)
    for module, on in (("traefik3", 3), ("mail2", 2), ("ghost9", 9)):
        topology.master.client().publish(
            "cluster/event/module-removed", json.dumps({"module": module, "node": on})
        )
    for number in (2, 3):
        wait_for(lambda n=number: routers.marks(topology.nodes[n - 1]), what=f"node {number}")
    for router, others in zip(routers.routers, (3, 2, 2), strict=True):
        router.wait_log(
            "route clean-up-here: .*when: payload.node == router.node is false", count=others
        )
        router.stop()
    assert [routers.marks(node) for node in topology.nodes] == [
        [],
        ["removed mail2 here"],
        ["removed traefik3 here"],
    ]


@pytest.fixture
def agents(topology: Topology, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Start stand-in NS8 agents on the master: reload-certificate echoes, broken fails."""
    actions = tmp_path / "actions"
    write_step(actions / "reload-certificate" / "10reload", f"cat >> {tmp_path}/agent-got")
    write_step(
        actions / "broken-action" / "10fail", "echo 'cannot reload: no such domain' >&2; exit 3"
    )
    started: list[subprocess.Popen[bytes]] = []

    def start(agent_id: str) -> None:
        started.append(start_agent(topology.master.url, agent_id, actions))

    yield start
    for proc in started:
        proc.kill()
        proc.wait(5)


def test_a_task_action_reaches_an_ns8_agent_and_the_route_sees_success_and_failure(
    topology: Topology, routers: NodeRouters, agents: Callable[[str], None], tmp_path: Path
) -> None:
    agents("module/mail1")
    routes = """
        routes:
          - name: reload-certificate
            on: module/{module}/event/certificate-changed
            runs_on: leader
            do:
              - task:
                  agent: module/mail1
                  action: reload-certificate
                  data: {domain: "{{ payload.domain }}", names: "{{ payload.names }}"}
                  timeout: 10s
              - run: ../handlers/mark
                env: {MARK: "after {{ payload.domain }}"}
    """
    failing = (
        routes.replace("name: reload-certificate", "name: broken")
        .replace("action: reload-certificate", "action: broken-action")
        .replace("certificate-changed", "certificate-expired")
    )
    both = routes + failing.split("routes:", 1)[1]
    second = topology.nodes[1]
    routers.start(topology.master, both)
    routers.start(second, both)  # a replica's router: runs_on: leader keeps it out
    client = topology.master.client()
    client.publish(
        "module/traefik1/event/certificate-changed",
        json.dumps({"domain": "example.org", "names": ["mail.example.org"]}),
    )
    wait_for(lambda: routers.marks(topology.master), what="the route went on after the task")
    client.publish(
        "module/traefik1/event/certificate-expired",
        json.dumps({"domain": "bad.example", "names": []}),
    )
    leader = routers.routers[0]
    leader.wait_log("task reload-certificate on module/mail1: task .* exit code 0")
    failed = leader.wait_log(
        r"task broken-action on module/mail1: task \S+ failed with exit code 3"
    )
    leader.wait_log("failure recorded as")
    for router in routers.routers:
        router.stop()
    assert json.loads(lines(tmp_path / "agent-got")[0]) == {
        "domain": "example.org",
        "names": ["mail.example.org"],  # a native list, not its text
    }
    assert "cannot reload: no such domain" in failed
    assert routers.marks(topology.master) == ["after example.org"]  # not after the failure
    assert routers.marks(second) == []
