"""Submit an NS8 task to an agent and follow it, the way NS8's own clients do.

The protocol (NS8's agent, documented in docs/cluster.md, "task:"):

* the agent ``BRPOP``s the list ``<agent-id>/tasks`` and names its connection after itself
  (``CLIENT SETNAME <agent-id>``); a client is live when such a connection has been idle for
  at most a few seconds (its BRPOP times out every 5 s);
* a task is the JSON object ``{"id", "action", "data", "extra", "parent"}``, ``LPUSH``ed;
* while it runs the agent publishes ``{"status", "progress"}`` on
  ``progress/<agent-id>/task/<id>``; at the end it sets ``task/<agent-id>/<id>/exit_code``,
  ``output`` and ``error`` and publishes the final status.

We subscribe to the progress channel before pushing, so the final status cannot slip by,
and read ``exit_code`` as well on a timer, in case the progress message was missed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from eventrouter.errors import TaskError
from eventrouter.model import TaskResult
from eventrouter.redis.bus import CONNECT_TIMEOUT, client

__all__ = ["TaskClient", "TaskError", "TaskResult", "agent_is_live", "task_message"]

log = logging.getLogger(__name__)

#: An agent whose connection has been idle longer than this is considered down (NS8: 8 s).
LIVE_IDLE = 8
#: How often ``exit_code`` is read while waiting, in case the final progress was missed.
POLL_EVERY = 1.0
FINAL_STATUSES = frozenset({"completed", "aborted", "validation-failed"})


def task_message(task_id: str, action: str, data: Any, extra: dict[str, Any], parent: str) -> bytes:
    """Return the JSON task an NS8 agent pops from its queue."""
    body = {"id": task_id, "action": action, "data": data, "extra": extra, "parent": parent}
    return json.dumps(body, separators=(",", ":")).encode()


async def agent_is_live(connection: aioredis.Redis, agent: str) -> bool:
    """Return True when a client named ``agent`` has been idle at most LIVE_IDLE seconds."""
    for entry in await connection.client_list():
        if entry.get("name") == agent and int(entry.get("idle", LIVE_IDLE + 1)) <= LIVE_IDLE:
            return True
    return False


class TaskClient:
    """Submit tasks on one connection (the leader's Redis, where agents read their queues)."""

    def __init__(self, url: str) -> None:
        self._connection = client(url, connect_timeout=CONNECT_TIMEOUT, timeout=10)

    async def run(
        self,
        agent: str,
        action: str,
        data: Any,
        *,
        limit: float,
        wait: bool = True,
        extra: dict[str, Any] | None = None,
        parent: str = "",
    ) -> TaskResult:
        """Submit ``action`` to ``agent``; unless ``wait`` is false, wait for its exit code.

        ``limit`` is how long to wait for the exit code, in seconds.
        """
        task_id = str(uuid.uuid4())
        message = task_message(task_id, action, data, extra or {}, parent)
        try:
            if not await agent_is_live(self._connection, agent):
                raise TaskError(
                    f"agent {agent} is not listening (no client named {agent!r} idle at most "
                    f"{LIVE_IDLE} s in CLIENT LIST)"
                )
            if not wait:
                await self._connection.lpush(f"{agent}/tasks", message)
                return TaskResult(task_id, None)
            return await self._follow(agent, task_id, message, limit)
        except (RedisError, OSError) as exc:
            raise TaskError(f"task {action} for {agent}: Redis error: {exc}") from exc

    async def _follow(self, agent: str, task_id: str, message: bytes, limit: float) -> TaskResult:
        pubsub = self._connection.pubsub()
        try:
            await pubsub.subscribe(f"progress/{agent}/task/{task_id}")
            await self._connection.lpush(f"{agent}/tasks", message)
            deadline = time.monotonic() + limit
            while True:
                code = await self._connection.get(f"task/{agent}/{task_id}/exit_code")
                if code is not None:
                    return await self._result(agent, task_id, code)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TaskError(f"task {task_id} on {agent}: no exit code after {limit:g}s")
                await self._final_progress(pubsub, min(left, POLL_EVERY))
        finally:
            await pubsub.aclose()

    @staticmethod
    async def _final_progress(pubsub: Any, wait: float) -> None:
        """Return when a final progress message arrives, or after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is None:
                continue
            try:
                status = json.loads(message["data"]).get("status")
            except (ValueError, AttributeError):
                continue
            if status in FINAL_STATUSES:
                return

    async def _result(self, agent: str, task_id: str, code: bytes | str) -> TaskResult:
        prefix = f"task/{agent}/{task_id}"
        output, error = await self._connection.mget(f"{prefix}/output", f"{prefix}/error")
        try:
            exit_code = int(code)
        except ValueError as exc:
            raise TaskError(
                f"task {task_id} on {agent}: exit code {code!r} is not a number"
            ) from exc
        return TaskResult(task_id, exit_code, _text(output), _text(error))

    async def close(self) -> None:
        """Close the connection."""
        try:
            await self._connection.aclose()
        except (RedisError, OSError):
            log.debug("closing the task connection failed", exc_info=True)


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""
