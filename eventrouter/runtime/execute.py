"""Find the program of an ``exec:`` action; ``runtime/actions.py`` runs it as a step.

The command gets everything a step gets, from the step runner itself (``StepRunner.
run_command``): the router's environment, the module's environment file, the action's
``env``, ``AGENT_EVENT_NAME``/``AGENT_EVENT_SOURCE``, the raw payload on stdin, its own
process group (registered with the warden, so it dies with the router), the timeout, the
concurrency cap, and every output line in the log with its ``<N>`` level.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from eventrouter.engine.render import Command


def find_program(command: Command, env: Mapping[str, str]) -> str | None:
    """Return the executable a command runs: its path, or its name found on PATH; else None.

    The PATH is the one the command itself gets (its action's ``env`` over the module's),
    as a shell in the step would search it; a relative entry is taken from the router's
    working directory and made absolute, since the command may start in another.
    """
    if command.path is not None:
        return command.path
    search = command.env.get("PATH", env.get("PATH", os.defpath))
    found = shutil.which(command.argv[0], path=search)
    return os.path.abspath(found) if found is not None else None
