"""`check` on ``exec:`` actions: the program exists and may be run, as the router would run it.

A path is checked as written (relative to the route file's folder); a bare name is looked up
on the PATH of `check` itself, which is the router's when `run` and a reload check the routes.
The daemon looks it up again when each command starts, on the PATH the command gets.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence

from eventrouter.config.trust import distrust, effective_uid
from eventrouter.errors import Diagnostic
from eventrouter.model import ExecAction, Route


def _problem(action: ExecAction) -> tuple[str | None, str | None]:
    """Return the program's path, or why it cannot run."""
    path = action.resolve()
    if path is None:
        found = shutil.which(action.program)
        if found is None:
            return None, (
                f"command {action.program!r} is not found on PATH; install it, or give its "
                f"path (exec: [/usr/local/bin/{action.program}, ...])"
            )
        return found, None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        where = "" if os.path.isabs(action.program) else " (relative to the route file's folder)"
        return None, f"command {path} does not exist{where}; install it or correct the path"
    except OSError as exc:
        return None, f"command {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return None, f"command {path} is not a file"
    if not os.access(path, os.X_OK):
        return None, f"command {path} is not executable (chmod +x {path})"
    return path, None


def command_findings(routes: Sequence[Route], euid: int | None = None) -> list[Diagnostic]:
    """Report ``exec:`` programs that are missing, not executable, or not to be trusted."""
    uid = effective_uid(euid)
    findings = []
    for route in routes:
        for action in route.actions:
            if not isinstance(action, ExecAction):
                continue
            path, problem = _problem(action)
            where = f"route {route.name}: exec"
            if problem is not None:
                findings.append(Diagnostic(route.file, action.line, "error", f"{where}: {problem}"))
                continue
            doubt = distrust(path or "", uid)
            if doubt is not None:
                message = f"{where}: {doubt.describe('command')}"
                findings.append(Diagnostic(route.file, action.line, doubt.severity, message))
    return findings
