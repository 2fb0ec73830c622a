"""A stand-in NS8 agent that speaks NS8's task protocol: for `make cluster` and the tests.

    python examples/cluster/ns8agent.py --redis URL --agent module/mail1 --actions DIR

It names its connection after the agent, BRPOPs ``<agent>/tasks`` (1 s timeout: the
heartbeat that keeps it live in CLIENT LIST), runs ``DIR/<action>/`` step by step with the
task's ``data`` as JSON on stdin, publishes progress on ``progress/<agent>/task/<id>``, and
at the end sets ``task/<agent>/<id>/{output,error,exit_code}`` and publishes the final status
in one transaction. Exit codes as NS8's: 8 no such action, 10 validation failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import redis

TTL = 8 * 3600


def run_action(folder: Path, task: dict[str, object]) -> tuple[int, str, str]:
    """Run the steps of ``folder``; return exit code, stdout and stderr."""
    steps = sorted(p for p in folder.iterdir() if p.is_file() and os.access(p, os.X_OK))
    if not steps:
        return 8, "", f"no steps for action {folder.name}\n"
    env = {**os.environ, "AGENT_TASK_ID": str(task["id"]), "AGENT_TASK_ACTION": folder.name}
    data = json.dumps(task.get("data"))
    output, error = [], []
    for step in steps:
        done = subprocess.run(
            [str(step)], input=data, capture_output=True, text=True, env=env, check=False
        )
        output.append(done.stdout)
        error.append(done.stderr)
        if done.returncode != 0:
            return done.returncode, "".join(output), "".join(error)
    return 0, "".join(output), "".join(error)


def serve(url: str, agent: str, actions: Path) -> None:
    """Pop and run tasks until killed."""
    connection = redis.Redis.from_url(url, socket_timeout=10)
    connection.client_setname(agent)
    while True:
        popped = connection.brpop([f"{agent}/tasks"], timeout=1)
        if popped is None:
            continue
        task = json.loads(popped[1])
        channel = f"progress/{agent}/task/{task['id']}"
        connection.publish(channel, json.dumps({"status": "running", "progress": 0}))
        folder = actions / str(task["action"])
        if folder.is_dir() and "/" not in str(task["action"]):
            code, output, error = run_action(folder, task)
        else:
            code, output, error = 8, "", f"action {task['action']} not found\n"
        status = {0: "completed", 10: "validation-failed"}.get(code, "aborted")
        prefix = f"task/{agent}/{task['id']}"
        with connection.pipeline(transaction=True) as pipe:
            pipe.set(f"{prefix}/output", output, ex=TTL)
            pipe.set(f"{prefix}/error", error, ex=TTL)
            pipe.set(f"{prefix}/exit_code", code, ex=TTL)
            pipe.publish(channel, json.dumps({"status": status, "progress": 100}))
            pipe.execute()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--actions", type=Path, required=True)
    args = parser.parse_args()
    serve(args.redis, args.agent, args.actions)


if __name__ == "__main__":
    main()
