"""Loading route files and folders: the table of every routes folder, and its findings.

A file is built by ``routefile`` (its schema); here files are read, rebuilt only when their
text changed (the daemon's cache), merged across folders (duplicate names, event schemas
declared twice) and judged by the trust rule (``trust``) before they are read. A reload
with any error keeps the old table.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from eventrouter.config.excerpt import excerpt
from eventrouter.config.handlers import handler_distrust
from eventrouter.config.payloads import WELL_KNOWN, EventSpec, payload_problem
from eventrouter.config.routefile import parse_file
from eventrouter.config.trust import distrust, effective_uid

# Also the command line's reading of durations (cli.main), which imports it from here.
from eventrouter.config.validators import parse_duration
from eventrouter.config.yamlload import YamlError, read_text
from eventrouter.errors import Diagnostic
from eventrouter.model import Event, Route, RunAction

__all__ = [
    "LoadResult",
    "load_file",
    "load_file_routes",
    "load_routes",
    "parse_duration",
    "route_files",
]


@dataclass(frozen=True)
class FileResult:
    """What one route file gave, and the hash of the text it was built from."""

    digest: bytes
    routes: tuple[Route, ...]
    schemas: dict[str, EventSpec]
    diagnostics: tuple[Diagnostic, ...]


#: Route files already built, by path: a reload rebuilds only the files that changed.
FileCache = dict[str, FileResult]


def load_file(
    path: Path, settle: float = 0.0
) -> tuple[list[Route], dict[str, EventSpec], list[Diagnostic]]:
    """Load one route file; return its routes, its event schemas and every finding."""
    try:
        text = read_text(path, settle)
    except YamlError as exc:
        return [], {}, [Diagnostic(str(path), exc.line, "error", exc.message)]
    return parse_file(path, text)


def _load_cached(path: Path, cache: FileCache, fresh: FileCache, settle: float) -> FileResult:
    """Load a file, reusing what the cache built from the very same text."""
    try:
        text = read_text(path, settle)
    except YamlError as exc:
        problem = Diagnostic(str(path), exc.line, "error", exc.message)
        return FileResult(b"", (), {}, (problem,))
    digest = hashlib.sha256(text.encode()).digest()
    known = cache.get(str(path))
    if (
        known is not None
        and known.digest == digest
        and not any(item.severity == "error" for item in known.diagnostics)
        and _folders_still_there(known)
    ):
        fresh[str(path)] = known
        return known
    routes, schemas, diagnostics = parse_file(path, text)
    result = FileResult(digest, tuple(routes), schemas, tuple(diagnostics))
    fresh[str(path)] = result
    return result


def _folders_still_there(result: FileResult) -> bool:
    return all(
        action.path.is_dir()
        for route in result.routes
        for action in route.actions
        if isinstance(action, RunAction)
    )


def load_file_routes(path: Path) -> tuple[list[Route], list[Diagnostic]]:
    """Load one route file; return its routes and every finding (routes only when no error)."""
    routes, _, diagnostics = load_file(path)
    return routes, diagnostics


def route_files(directory: Path) -> list[Path]:
    """Return the ``*.yml``/``*.yaml`` files directly in ``directory``, byte-wise by name."""
    names = [
        entry.name
        for entry in os.scandir(directory)
        if entry.name.endswith((".yml", ".yaml"))
        and not entry.name.startswith(".")
        and (entry.is_file() or not entry.is_dir())
    ]
    return [directory / name for name in sorted(names, key=os.fsencode)]


@dataclass(frozen=True)
class LoadResult:
    """Routes of every folder, in file order, and every finding."""

    routes: tuple[Route, ...]
    diagnostics: tuple[Diagnostic, ...]
    #: Every event schema: the well-known ones and the operators' own.
    schemas: dict[str, EventSpec] = field(default_factory=lambda: dict(WELL_KNOWN))

    @property
    def ok(self) -> bool:
        """Return True when no finding is an error."""
        return not any(d.severity == "error" for d in self.diagnostics)


def _trust_findings(path: Path, what: str, line: int, euid: int) -> list[Diagnostic]:
    doubt = distrust(path, euid)
    if doubt is None:
        return []
    return [Diagnostic(str(path), line, doubt.severity, doubt.describe(what))]


def _handler_trust(routes: Iterable[Route], euid: int) -> list[Diagnostic]:
    """Judge the handler folder of every run action, and its steps, once each."""
    findings = []
    seen: set[Path] = set()
    for route in routes:
        for action in route.actions:
            if isinstance(action, RunAction) and action.path not in seen:
                seen.add(action.path)
                findings += [
                    Diagnostic(route.file, action.line, doubt.severity, doubt.describe(what))
                    for what, doubt in handler_distrust(action.path, euid)
                ]
    return findings


def load_routes(
    directories: Iterable[Path],
    cache: FileCache | None = None,
    *,
    euid: int | None = None,
    settle: float = 0.0,
) -> LoadResult:
    """Load every route file of ``directories``; report duplicates across files.

    With a ``cache`` (kept by the daemon between reloads), a file whose text has not
    changed is not parsed again; the cache is left holding the files of this load.
    Files, folders and steps others could change are refused when ``euid`` (by default
    the process's) is root, warned about otherwise (see ``trust``). With ``settle`` (a
    reload), a file modified less than that many seconds ago is read once it is quiet.
    """
    uid = effective_uid(euid)
    fresh: FileCache = {}
    routes: list[Route] = []
    diagnostics: list[Diagnostic] = []
    schemas: dict[str, EventSpec] = dict(WELL_KNOWN)
    for directory in directories:
        try:
            files = route_files(directory)
        except OSError as exc:
            message = f"cannot read routes folder: {exc.strerror or exc}"
            diagnostics.append(Diagnostic(str(directory), 0, "error", message))
            continue
        diagnostics += _trust_findings(directory, "routes folder", 0, uid)
        for path in files:
            doubts = _trust_findings(path, "route file", 1, uid)
            diagnostics += doubts
            if any(item.severity == "error" for item in doubts):
                continue  # refused: not even read
            if cache is None:
                found, declared, notes = load_file(path, settle)
            else:
                result = _load_cached(path, cache, fresh, settle)
                found, declared, notes = (
                    list(result.routes),
                    result.schemas,
                    list(result.diagnostics),
                )
            routes.extend(found)
            diagnostics.extend(notes)
            for name, spec in declared.items():
                if name in schemas:
                    message = f"event schema {excerpt(name)} is declared twice"
                    diagnostics.append(Diagnostic(str(path), 1, "error", message))
                schemas[name] = spec
    seen: dict[str, Route] = {}
    unique: list[Route] = []
    for route in routes:
        first = seen.get(route.name)
        if first is not None:
            message = (
                f"duplicate route name {route.name!r}, first defined at {first.file}:{first.line}"
            )
            diagnostics.append(Diagnostic(route.file, route.line, "error", message))
            continue
        seen[route.name] = route
        strict = route.schema == "strict"
        unique.append(
            replace(route, payload_check=partial(_strict_check, schemas)) if strict else route
        )
    diagnostics += _handler_trust(unique, uid)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    return LoadResult(tuple(unique), tuple(diagnostics), schemas)


def _strict_check(schemas: dict[str, EventSpec], event: Event) -> str | None:
    return payload_problem(schemas.get(event.name or ""), event)
