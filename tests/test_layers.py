"""The package's layers: imports point down, and each third-party library lives in one layer.

Every import statement counts, at module level or inside a function, so that a lazy import
cannot cross a layer unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "eventrouter"

#: Top to bottom; a module may import from its own layer and from the layers below it.
#: Layers on one row are siblings: neither imports the other.
LAYERS: list[tuple[str, ...]] = [
    # The in-process test harness: above everything, imported by nothing in the router.
    ("__main__", "testing"),
    ("cli",),
    ("service",),
    ("analysis", "redis"),
    ("runtime",),
    ("engine",),
    ("config",),
    ("model", "errors", "__init__"),
    # Generic helpers (stdlib only) that any layer may use.
    ("support",),
]
#: Third-party libraries and the layers allowed to import them.
LIBRARIES = {
    "redis": {"redis"},
    "voluptuous": {"config"},
    # Templates are compiled in config; the deep check reads their syntax trees.
    "jinja2": {"config", "analysis"},
    "yaml": {"config"},
    # The metrics endpoint, an optional extra, served by the daemon.
    "prometheus_client": {"service"},
    # Reload on save (`run --watch`), an optional extra.
    "watchfiles": {"service"},
}


def layer_of(module: str) -> str:
    """Return the layer of a module given as a dotted name below the package."""
    return module.split(".", maxsplit=1)[0]


def rank(layer: str) -> int:
    return next(index for index, row in enumerate(LAYERS) if layer in row)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """Return (line, absolute dotted name) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            if base == "eventrouter":  # from eventrouter import x: x may be a subpackage
                found += [
                    (node.lineno, f"eventrouter.{alias.name}")
                    if (PACKAGE / alias.name).exists() or (PACKAGE / f"{alias.name}.py").exists()
                    else (node.lineno, "eventrouter")
                    for alias in node.names
                ]
            else:
                found.append((node.lineno, base))
    return found


def violations() -> list[str]:
    found = []
    for name, path in modules().items():
        here = layer_of(name)
        for line, target in imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            top = target.split(".")[0]
            if top == "eventrouter":
                inner = target.split(".")[1] if "." in target else "__init__"
                there = layer_of(inner)
                if there == here:
                    continue
                if rank(there) <= rank(here):
                    found.append(f"{where}: {here} imports {target} (layer {there} is not below)")
            elif top in LIBRARIES and here not in LIBRARIES[top]:
                found.append(f"{where}: {top} is imported outside {sorted(LIBRARIES[top])}")
    return found


def test_every_module_belongs_to_a_layer() -> None:
    layers = {layer for row in LAYERS for layer in row}
    assert {layer_of(name) for name in modules()} <= layers


def test_imports_point_down_and_libraries_stay_in_their_layer() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("from eventrouter.cli import main\n", "config imports eventrouter.cli"),
        ("import redis.asyncio\n", "redis is imported outside"),
        ("def f():\n    from eventrouter.runtime import steps\n", "imports eventrouter.runtime"),
    ],
)
def test_the_check_catches_a_wrong_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, problem: str
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path)
    assert any(problem in line for line in violations())
