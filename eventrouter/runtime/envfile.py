"""The module's environment: the ``environment`` file steps read, and ``env`` in templates.

A step's environment is the router's own, then the ``KEY=VALUE`` lines of the file
``environment`` in the step's working directory (``$AGENT_STATE_DIR`` when set, else the
router's own), then what the action adds. NS8's own tools rewrite that file while modules run
(the agent library's ``set_env``), so templates see it as it is when each event arrives:
``ModuleEnvironment.current`` costs one ``stat`` per event and parses the file again only when
its identity (modification time, size, inode) has changed.

Apart from the step runner, so that `explain` and `test` read ``--env-file`` by the same
rules without importing what runs steps (tests/test_imports.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

logger = logging.getLogger(__name__)

#: The name of the module's environment file, in the step's working directory.
FILE_NAME = "environment"
#: An empty environment, shared.
EMPTY: Mapping[str, str] = MappingProxyType({})


def read_environment_file(path: str | Path) -> dict[str, str]:
    """Return the ``KEY=VALUE`` lines of ``path``; an absent file gives an empty mapping."""
    if not os.access(path, os.F_OK):  # the usual case, for every step: no exception to raise
        return {}
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        reason = exc.strerror or str(exc)
        logger.warning("cannot read environment file %s: %s; ignoring it", path, reason)
        return {}
    return parse_environment(data, str(path))


def parse_environment(data: bytes, where: str = "environment") -> dict[str, str]:
    """Return the ``KEY=VALUE`` lines of an environment file's bytes (blank and # lines skipped)."""
    result: dict[str, str] = {}
    # surrogateescape keeps undecodable bytes intact on their way back into the environment.
    text = data.decode("utf-8", "surrogateescape")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key or "\0" in line:
            logger.debug("%s:%d: not a KEY=VALUE line, ignored", where, number)
            continue
        result[key] = value
    return result


def working_directory(state_dir: str | None) -> str | None:
    """Return where steps run: ``state_dir`` when it is a folder, else None (the router's own)."""
    if state_dir and os.path.isdir(state_dir):
        return os.path.abspath(state_dir)
    return None


class ModuleEnvironment:
    """What a step this router starts finds in its environment, before the action's own ``env``.

    The router's environment (``base``) and the environment file of the steps' working
    directory, re-read only when the file changed: ``current()`` returns the very same
    mapping object while the file stays as it was, so callers can tell a change by identity.
    """

    def __init__(self, base: Mapping[str, str]) -> None:
        self._base = dict(base)
        self._state_dir = self._base.get("AGENT_STATE_DIR")
        # As the step runner decides it for each step: the state folder's file when that
        # folder exists, else the file in the router's working directory.
        self._state_file = os.path.join(self._state_dir, FILE_NAME) if self._state_dir else None
        self._identity: tuple[str, int, int, int] | None = None
        self._current: Mapping[str, str] = MappingProxyType(dict(self._base))
        self._plain = self._current

    def current(self) -> Mapping[str, str]:
        """Return the environment as it is now: one ``stat``, a parse only after a change."""
        found = self._stat()
        if found is None:
            self._identity = None
            self._current = self._plain
            return self._current
        path, info = found
        identity = (path, info.st_mtime_ns, info.st_size, info.st_ino)
        if identity != self._identity:
            self._identity = identity
            self._current = MappingProxyType(self._base | read_environment_file(path))
        return self._current

    def _stat(self) -> tuple[str, os.stat_result] | None:
        """Return the environment file the steps would read now, with its ``stat``; None: none."""
        if self._state_file is not None:
            try:
                return self._state_file, os.stat(self._state_file)
            except OSError:
                # Only a state folder that is not there sends the steps to the router's own.
                if working_directory(self._state_dir) is not None:
                    return None
        try:
            return FILE_NAME, os.stat(FILE_NAME)
        except OSError:
            return None
