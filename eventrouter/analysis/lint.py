"""Deep lint of a loaded route table, for ``eventrouter check``.

Finds derived-event cycles across files (the graph and glob intersection live in ``loops``),
handler and events folders with nothing or something broken to run, template references to
fields an event does not carry, patterns that can never match an event, duplicate routes,
folders that one event would run twice, and event names not in the past tense.

What templates refer to is read in ``refs``, the past tense checked in ``tense``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eventrouter.analysis.cycles import cycle_findings
from eventrouter.analysis.loops import Neighbours, contains, emit_graph, overlap, pattern_glob
from eventrouter.analysis.programs import command_findings
from eventrouter.analysis.refs import emit_glob, template_findings, warning
from eventrouter.analysis.stepnotes import merge_findings, skipped_note
from eventrouter.analysis.tense import tense_findings
from eventrouter.config.handlers import handler_distrust, is_ignored, list_steps
from eventrouter.config.loader import LoadResult
from eventrouter.config.trust import Distrust, distrust
from eventrouter.errors import Diagnostic
from eventrouter.model import EVENT_MARK, SAFE_NAME, EmitAction, Route, RunAction
from eventrouter.runtime.skips import MENTIONS

_EVENT_CHANNEL = pattern_glob("*/event/*")


def deep_check(
    result: LoadResult, events_dirs: list[Path], euid: int | None = None
) -> list[Diagnostic]:
    """Return every deep-lint finding about a route table that loads without errors.

    ``euid`` says whose trust rules apply to events folders (default: this process's).
    """
    routes = result.routes
    emits = [[emit_glob(a) for a in r.actions if isinstance(a, EmitAction)] for r in routes]
    graph = emit_graph(routes, emits)
    findings = cycle_findings(routes, graph)
    findings += folder_findings(routes, events_dirs)
    findings += events_trust_findings(events_dirs, euid)
    for route in routes:
        findings += template_findings(route, result.schemas)
        findings += pattern_findings(route)
        findings += tense_findings(route)
    findings += duplicate_findings(routes)
    findings += twice_findings(routes, events_dirs)
    findings += command_findings(routes, euid)
    return sorted(findings, key=lambda item: (item.file, item.line))


# --- handler and events folders --------------------------------------------------------------


def _folder_findings(folder: Path, where: Route | str, line: int) -> list[Diagnostic]:
    """Report a handler folder with nothing runnable, or entries that will be skipped.

    A route's folder with nothing runnable is an error: its action can never run a step
    (a step made executable by an earlier step of the run needs an earlier step that runs).
    An events folder only warns: NS8 modules create and fill those folders themselves.
    """
    try:
        steps, skipped = list_steps(folder)
    except OSError as exc:
        return [warning(where, line, f"handler folder {folder} cannot be read: {exc.strerror}")]
    findings = []
    for entry in skipped:
        findings.append(warning(where, line, skipped_note(folder, entry)))
        if entry.passed_over:  # named here, so in the log of `run` at start: not again by a run
            MENTIONS.first(os.path.join(os.path.abspath(folder), entry.name))
    if steps:
        return findings
    if not isinstance(where, Route):
        return [*findings, warning(where, line, f"handler folder {folder} has no runnable step")]
    why = (
        "none of its entries is an executable step at check time, and only a step that runs "
        "could make another one executable (chmod +x the steps to run, or remove the action)"
        if skipped
        else "it holds no step (add executable steps, or remove the action)"
    )
    message = f"route {where.name}: handler folder {folder} has nothing to run: {why}"
    return [*findings, Diagnostic(where.file, line, "error", message)]


def _event_folders(events_dirs: Sequence[Path]) -> Iterator[Path]:
    """Yield every folder directly under each events folder, by name."""
    for base in events_dirs:
        try:
            names = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        except OSError:
            continue  # cli.cmd_check reports a missing events folder
        yield from (base / name for name in names if not is_ignored(name))


def folder_findings(routes: Sequence[Route], events_dirs: Sequence[Path]) -> list[Diagnostic]:
    """Check each handler folder of a run action, and every folder of the events folders."""
    findings: list[Diagnostic] = []
    seen: set[Path] = set()
    for route in routes:
        for action in route.actions:
            if isinstance(action, RunAction) and action.path not in seen:
                seen.add(action.path)
                findings += _folder_findings(action.path, route, action.line)
    named = []
    for folder in _event_folders(events_dirs):
        if not SAFE_NAME.fullmatch(folder.name):
            message = "never runs: event names must match [A-Za-z0-9][A-Za-z0-9._-]*"
            findings.append(warning(str(folder), 0, message))
        else:
            findings += _folder_findings(folder, str(folder), 0)
            named.append(folder)
    return findings + merge_findings(named)


def _doubt(where: Path, what: str, doubt: Distrust) -> Diagnostic:
    return Diagnostic(str(where), 0, doubt.severity, doubt.describe(what))


def events_trust_findings(events_dirs: Sequence[Path], euid: int | None) -> list[Diagnostic]:
    """Judge each events folder, its ``<name>/`` folders and their steps (see ``trust``)."""
    findings = []
    for base in events_dirs:
        doubt = distrust(base, euid)
        if doubt is not None:
            findings.append(_doubt(base, "events folder", doubt))
    for folder in _event_folders(events_dirs):
        if SAFE_NAME.fullmatch(folder.name):
            findings += [_doubt(d.path, what, d) for what, d in handler_distrust(folder, euid)]
    return findings


# --- patterns, duplicates, folders run twice -------------------------------------------------


def pattern_findings(route: Route) -> list[Diagnostic]:
    """Report patterns that no event channel ``<source>/event/<name>`` can match."""
    return [
        warning(
            route,
            route.line,
            f"pattern {p.text} can never match an event channel <source>/event/<name>",
        )
        for p in route.patterns
        if not contains(pattern_glob(p.text), EVENT_MARK)  # the quick, usual answer
        and not overlap(pattern_glob(p.text), _EVENT_CHANNEL)
    ]


def _rough_key(route: Route) -> Any:
    """Return a key equal for identical routes, quick to compute, seldom equal otherwise."""
    when = route.when.source if route.when is not None else None
    return tuple(p.text for p in route.patterns), when, tuple(a.describe() for a in route.actions)


def duplicate_findings(routes: Sequence[Route]) -> list[Diagnostic]:
    """Report enabled routes identical to an earlier one but for their name."""
    groups: dict[Any, list[Route]] = defaultdict(list)
    for route in routes:
        if route.enabled:
            groups[_rough_key(route)].append(route)
    findings = []
    for group in groups.values():
        first: dict[Any, Route] = {}
        for route in group if len(group) > 1 else ():
            earlier = first.setdefault(route.fingerprint, route)
            if earlier is not route:
                message = (
                    f"duplicates route {earlier.name} ({earlier.file}:{earlier.line}): same "
                    "patterns, condition and actions, so every event runs both"
                )
                findings.append(warning(route, route.line, message))
    return findings


def _twice_message(folder: Path, other: Route | None, theirs: str, mine: str) -> str:
    if other is None:
        return (
            f"runs handler folder {folder}, which also runs by convention for {theirs}, and "
            f"pattern {mine} can match such a channel: one event would run the folder twice"
        )
    return (
        f"runs handler folder {folder}, as route {other.name} ({other.file}:{other.line}) "
        f"does, and patterns {theirs} and {mine} can match the same channel: one event would "
        "run the folder twice"
    )


def _first_clash(
    route: Route, seen: Neighbours[Route | None]
) -> tuple[Route | None, str, str] | None:
    """Return an earlier user of the folder whose pattern overlaps one of ``route``'s."""
    for pattern in route.patterns:
        for text in seen.near[pattern.text]:
            for other in seen.owners.get(text, ()):
                if other is None or other.fingerprint != route.fingerprint:
                    return other, text, pattern.text  # not a duplicate (reported as such)
    return None


def _twice(users: Sequence[tuple[Route, RunAction]], convention: str | None) -> list[Diagnostic]:
    """Report each user of one folder whose patterns overlap an earlier user's (the first)."""
    seen: Neighbours[Route | None] = Neighbours()
    if convention is not None:
        seen.add(f"*/event/{convention}", None)
    findings = []
    for route, action in users:
        for pattern in route.patterns:
            seen.learn(pattern.text)
        clash = _first_clash(route, seen)
        if clash is not None:
            message = _twice_message(action.path, *clash)
            findings.append(warning(route, action.line, message))
        for pattern in route.patterns:
            seen.add(pattern.text, route)
    return findings


def twice_findings(routes: Sequence[Route], events_dirs: Sequence[Path]) -> list[Diagnostic]:
    """Report handler folders that one event would run twice (two routes, or route and events)."""
    users: dict[str, list[tuple[Route, RunAction]]] = defaultdict(list)
    real: dict[Path, str] = {}
    for route in routes:
        runs = {a.path: a for a in route.actions if isinstance(a, RunAction)}
        for path, action in runs.items() if route.enabled else ():
            if path not in real:
                real[path] = os.path.realpath(path)
            users[real[path]].append((route, action))
    conventions = {
        os.path.realpath(folder): folder.name
        for folder in _event_folders(events_dirs)
        if SAFE_NAME.fullmatch(folder.name)
    }
    findings = []
    for folder, found in users.items():
        if len(found) > 1 or folder in conventions:
            findings += _twice(found, conventions.get(folder))
    return findings
