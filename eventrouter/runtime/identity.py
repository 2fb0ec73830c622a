"""Where a router runs: its node and agent, as NS8 tells its agents (docs/cluster.md).

The node is ``--node``, else ``NODE_ID`` from the environment, else the ``NODE_ID=`` line of
the ``environment`` file in ``$AGENT_STATE_DIR``, where NS8 modules keep it. The agent is
``--agent``, else ``AGENT_ID``. Whether the router is the leader's is read from Redis
(``redis/role.py``); until it is, and with no Redis at all, a router is a one-node leader.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from eventrouter.model import RouterInfo

log = logging.getLogger(__name__)


def node_value(text: str | None) -> int | str | None:
    """Return a node id as NS8 payloads carry it: a number when it is one, else the text."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    return int(text) if text.isdigit() else text


def environment_file_value(state_dir: str | None, key: str) -> str | None:
    """Return ``key`` from ``$AGENT_STATE_DIR/environment`` (``KEY=VALUE`` lines), or None."""
    if not state_dir:
        return None
    path = Path(state_dir) / "environment"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


def router_identity(
    node: str | None,
    agent: str | None,
    env: Mapping[str, str],
    *,
    instance: str = "",
    leader: bool = True,
) -> RouterInfo:
    """Return the router's node, agent and instance from the options, else the environment."""
    found = (
        node or env.get("NODE_ID") or environment_file_value(env.get("AGENT_STATE_DIR"), "NODE_ID")
    )
    return RouterInfo(
        node=node_value(found),
        agent=agent or env.get("AGENT_ID") or None,
        instance=instance,
        leader=leader,
    )


def instance_name(configured: str) -> str:
    """Return this router's name (journal, retries, status): the configured one, else the host."""
    return configured or socket.gethostname()
