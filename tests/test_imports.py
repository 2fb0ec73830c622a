"""What each command imports: the tools stay light, the daemon stays lean (issue 11).

Each case runs a command through ``cli.main.main`` in a fresh interpreter and lists
``sys.modules`` afterwards: what a command never needs must not be loaded, or `--help` and
`check` pay for the runtime's imports (asyncio, redis-py, the step spawner) at every start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.routerproc import REPO, clean_env

EXAMPLES = REPO / "examples" / "ns8-cluster"
ROUTES = ["--routes", str(EXAMPLES / "routes.d"), "--events-dir", str(EXAMPLES / "events")]
#: Runs ``main(argv)`` and writes the loaded module names to the file named first.
PROBE = """
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
if argv == ["<import>"]:
    import eventrouter.cli.main
else:
    from eventrouter.cli.main import main
    try:
        main(argv)
    except SystemExit:
        pass
with open(out, "w") as handle:
    json.dump(sorted(sys.modules), handle)
"""
#: What only `run` (and the commands that talk to Redis) may load. The tools read handler
#: folders with eventrouter.config.handlers; of the runtime, they may load runtime.skips alone.
RUNTIME = ("asyncio", "redis", "hiredis", "eventrouter.redis", "eventrouter.service",
           "concurrent.futures", "ssl", *(f"eventrouter.runtime.{name}" for name in
           ("dispatch", "journal", "lanes", "limiter", "spawn", "statedir", "steps")))  # fmt: skip


def loaded(tmp_path: Path, *argv: str) -> list[str]:
    """Return the modules loaded after running ``argv`` through the CLI's main."""
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *argv],
        capture_output=True,
        env=clean_env(),
        cwd=REPO,
        timeout=60,
        check=True,
    )
    names: list[str] = json.loads(out.read_text())
    return names


def under(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """Return the names that are one of ``prefixes`` or a submodule of one."""
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize(
    "argv",
    [
        ("<import>",),
        ("--help",),
        ("check", *ROUTES),
        ("explain", *ROUTES, "cluster/event/leader-changed", '{"node": 1}'),
        ("test", *ROUTES),
        ("routes", "--routes", str(EXAMPLES / "routes.d")),
    ],
    ids=["import", "help", "check", "explain", "test", "routes"],
)
def test_tools_do_not_import_the_runtime(tmp_path: Path, argv: tuple[str, ...]) -> None:
    names = loaded(tmp_path, *argv)
    assert "eventrouter.cli.main" in names  # the probe did run the command line
    assert under(names, RUNTIME) == []


@pytest.mark.parametrize("argv", [("<import>",), ("--help",)], ids=["import", "help"])
def test_help_does_not_import_the_route_loader(tmp_path: Path, argv: tuple[str, ...]) -> None:
    names = loaded(tmp_path, *argv)
    assert under(names, ("eventrouter.config", "yaml", "jinja2", "voluptuous")) == []


def test_the_daemon_module_does_not_import_the_analysis(tmp_path: Path) -> None:
    # `run` validates at start with the deep check (issue 8) and imports it for that alone.
    out = tmp_path / "modules.json"
    code = (
        "import json, sys, eventrouter.service.daemon\n"
        f"json.dump(list(sys.modules), open({str(out)!r}, 'w'))"
    )
    subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO, timeout=60, check=True)
    assert under(json.loads(out.read_text()), ("eventrouter.analysis",)) == []
