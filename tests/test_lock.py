"""The lock file: what `make` installs must be what pyproject.toml asks for, on every machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.routerproc import REPO

#: uv comes with the development environment, at the version the lock pins for it.
UV = Path(sys.executable).parent / "uv"


def _lock_check(folder: Path) -> subprocess.CompletedProcess[str]:
    """Run ``uv lock --check`` on ``folder`` without the network."""
    if not UV.exists():
        pytest.fail(f"{UV} is missing: the development environment is installed by `make`")
    return subprocess.run(
        [str(UV), "lock", "--check", "--offline", "--directory", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        # The cache `make` filled lets uv resolve offline; the network is never asked.
        env={**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never"},
    )


def _project_copy(tmp_path: Path) -> Path:
    """Copy what ``uv lock`` reads of the project into ``tmp_path``."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "eventrouter").mkdir()
    (tmp_path / "eventrouter" / "__init__.py").touch()
    return tmp_path


def test_the_lock_agrees_with_pyproject(tmp_path: Path) -> None:
    result = _lock_check(_project_copy(tmp_path))
    assert result.returncode == 0, result.stderr


def _declared(pyproject: str) -> set[tuple[str, str, str]]:
    """What ``pyproject`` asks for: (name, specifier, extra) for every requirement."""
    project = tomllib.loads(pyproject)["project"]
    groups = {"": project.get("dependencies", []), **project.get("optional-dependencies", {})}
    declared = set()
    for extra, requirements in groups.items():
        for text in requirements:
            requirement = Requirement(text)
            declared.add((canonicalize_name(requirement.name), str(requirement.specifier), extra))
    return declared


def _locked(lock: str) -> set[tuple[str, str, str]]:
    """What the lock was resolved for: the project's own ``requires-dist`` as uv recorded it."""
    root = next(p for p in tomllib.loads(lock)["package"] if p["name"] == "eventrouter")
    locked = set()
    for entry in root["metadata"]["requires-dist"]:
        extra = re.fullmatch(r"extra == '([^']*)'", entry.get("marker", "extra == ''"))
        assert extra is not None, entry
        specifier = str(SpecifierSet(entry.get("specifier", "")))
        locked.add((canonicalize_name(entry["name"]), specifier, extra.group(1)))
    return locked


def test_the_lock_was_resolved_for_what_pyproject_declares() -> None:
    # The same question as uv's check, answered from the two files alone: no cache, no network.
    declared = _declared((REPO / "pyproject.toml").read_text())
    assert declared == _locked((REPO / "uv.lock").read_text())


def test_a_pyproject_change_the_lock_does_not_follow_is_caught(tmp_path: Path) -> None:
    changed = (REPO / "pyproject.toml").read_text().replace('"redis>=5.0"', '"redis>=5.1"')
    declared = _declared(changed)
    locked = _locked((REPO / "uv.lock").read_text())
    assert declared ^ locked == {("redis", ">=5.1", ""), ("redis", ">=5.0", "")}
    # uv refuses the lock too: with its cache it says so; on a machine whose cache holds no
    # index pages (a fresh CI machine) it fails trying to resolve offline. Either way, not 0.
    folder = _project_copy(tmp_path)
    (folder / "pyproject.toml").write_text(changed)
    assert _lock_check(folder).returncode != 0


def test_the_makefile_bootstraps_the_uv_the_lock_pins() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    pinned = {package["name"]: package["version"] for package in lock["package"]}
    bootstrap = re.search(r"^UV_VERSION = (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert bootstrap is not None
    assert bootstrap.group(1) == pinned["uv"]


def test_every_locked_download_carries_a_hash() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    files = [
        entry
        for package in lock["package"]
        if "registry" in package.get("source", {})
        for entry in [package.get("sdist", {}), *package.get("wheels", [])]
        if entry
    ]
    assert files
    assert all(entry.get("hash", "").startswith("sha256:") for entry in files)
