"""Route unit tests: an event in, the expected routes, derived events and steps out.

Checked by the engine of ``explain`` (no Redis, no side effects). By default ``eventrouter
test`` reads ``tests/*.yml`` and ``tests/*.yaml`` in each routes folder (route loading reads
only the files directly in the folder, so it never sees them). A test file::

    tests:
      - name: module-added announces the module     # required, unique in the file
        router: {node: 2, leader: false}             # optional: decide as this router
                                                     # (node, agent, instance, leader)
        env: {NODE_ID: "1", POSTFIX_ORIGIN: example.org}
                                                     # optional: ``env`` in templates, over
                                                     # --env/--env-file (never the shell's)
        event:
          channel: cluster/event/module-added        # required
          payload: {module: traefik1, node: 1}       # a mapping, list, number, boolean or
                                                     # null is sent as JSON; a string is sent
                                                     # as is (``cluster/acls``); none: empty
        expect:                                      # at least one of:
          fire: [module-added]        # these fire on the event (others may too)
          fire_only: [module-added]   # these fire and no other (instead of ``fire``)
          not_fire: [module-removed]  # none of these fires on the event
          nothing: true               # no route nor events folder fires (false: something does)
          tasks:                      # every task submitted across the cascade, in plan order
            - {agent: module/mail1, action: configure-module, data: {hostname: x}}
                                      # data optional, matched as a subset like payload
          commands:                   # every exec: across the cascade, in plan order, as
            - [systemctl, --user, reload, mail1.service]  # rendered (program as written)
          emits:                      # every derived event of the cascade, in plan order
            - channel: cluster/event/module-domain-changed
              payload: {modules: [traefik1]}  # optional; a subset: mappings need only the
                                              # listed keys (recursively), anything else equal
          steps: [module-removed/00validate_event, module-removed/10config_cleanup]
                                      # every step that would run, across the cascade, in
                                      # plan order, as <handler folder name>/<step>
          cut: false                  # whether the loop guard would cut a derived event
          errors: false               # whether a condition, template or handler folder
                                      # error would occur; false when left out

``fire``, ``fire_only`` and ``not_fire`` concern the test event itself; an events folder is
named ``events:<folder name>`` there (``events:acl-changed``). Route names are checked against
the loaded routes and events folders, so a typo is an error, not a test that cannot fail.
``emits: []`` and ``steps: []`` assert that no derived event is emitted, no step runs.
Plan order: routes in file order, events folders last, actions in order, and the cascade of
a derived event right after its emit. Every problem in a test file is reported as
``FILE:LINE: error: message``, and a file with errors runs no test; a failing test prints
``FILE:LINE: FAIL name`` and what differs. The last line is ``N passed, M failed``.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from eventrouter.analysis.explain import EventPlan, Explainer, RoutePlan
from eventrouter.config.loader import route_files
from eventrouter.config.testfile import ANY, Expect, RouteTest, load_tests
from eventrouter.engine.events import convention_label
from eventrouter.model import RouterInfo
from eventrouter.runtime.identity import node_value


@dataclass
class Outcome:
    """What the plan of an event says would happen, in the terms of the test files."""

    fired: list[str]
    emits: list[tuple[str, Any]] = field(default_factory=list)
    tasks: list[tuple[str, str, Any]] = field(default_factory=list)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _label(route: RoutePlan) -> str:
    return convention_label(Path(route.file)) if route.convention else route.name


def outcome(plan: EventPlan) -> Outcome:
    """Return what the plan of an event says would happen."""
    result = Outcome([_label(route) for route in plan.fired])
    _walk(plan, result)
    return result


def _walk(plan: EventPlan, result: Outcome) -> None:
    for route in plan.routes:
        if route.when_error:
            result.errors.append(f"route {route.name}: when: {route.when_error}")
        for action in route.actions if route.fires else ():
            if action.error:
                result.errors.append(
                    f"{_label(route)}: {action.kind} {action.target}: {action.error}"
                )
            elif action.kind == "run":
                folder = Path(action.target).name
                result.steps += [f"{folder}/{step.name}" for step in action.steps if step.runs]
            elif action.kind == "task" and action.task is not None:
                task = action.task
                result.tasks.append((task["agent"], task["action"], task["data"]))
            elif action.kind == "exec" and action.argv is not None:
                result.commands.append(tuple(action.argv))
            elif action.cut:
                result.cuts.append(action.cut)
            else:
                result.emits.append((action.channel or "", action.payload))
                if action.cascade is not None:
                    _walk(action.cascade, result)


def _dump(value: Any, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=sort_keys)


def _mismatch(expected: Any, actual: Any, where: str) -> str | None:
    """Return the first place where ``actual`` does not contain ``expected``, or None."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if key not in actual:
                return f"{where}.{key}: missing"
            found = _mismatch(value, actual[key], f"{where}.{key}")
            if found:
                return found
        return None
    # Compared as JSON text, so that true is not 1 and lists compare item by item.
    if _dump(expected, sort_keys=True) == _dump(actual, sort_keys=True):
        return None
    return f"{where}: expected {_dump(expected)}, got {_dump(actual)}"


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _check_routes(expect: Expect, out: Outcome) -> list[str]:
    fired, problems = _names(out.fired), []
    if expect.fire is not None and not set(expect.fire) <= set(out.fired):
        problems.append(f"expected routes to fire: {_names(expect.fire)}; fired: {fired}")
    if expect.fire_only is not None and set(expect.fire_only) != set(out.fired):
        wanted = _names(expect.fire_only)
        problems.append(f"expected only these routes to fire: {wanted}; fired: {fired}")
    wrong = [name for name in expect.not_fire if name in out.fired]
    if wrong:
        problems.append(f"expected routes not to fire: {_names(wrong)}; fired: {fired}")
    if expect.nothing is not None and expect.nothing != (not out.fired):
        wanted = "nothing to run" if expect.nothing else "something to run"
        problems.append(f"expected {wanted}; fired: {fired}")
    return problems


def _emits_problem(
    expected: Sequence[tuple[str, Any]], actual: list[tuple[str, Any]]
) -> str | None:
    first = None
    for number, ((want_channel, want), (channel, payload)) in enumerate(
        zip(expected, actual, strict=False), 1
    ):
        if want_channel != channel:
            first = f"event {number}: channel: expected {want_channel}, got {channel}"
        elif want is not ANY:
            first = _mismatch(want, payload, f"event {number}: payload")
        if first:
            break
    if first is None and len(expected) == len(actual):
        return None
    lines = [f"expected {len(expected)} derived event(s):"]
    lines += [f"    {ch} {'(any payload)' if p is ANY else _dump(p)}" for ch, p in expected]
    lines += [f"  emitted {len(actual)}:", *(f"    {ch} {_dump(p)}" for ch, p in actual)]
    return "\n".join(lines + ([f"  first difference: {first}"] if first else []))


def _tasks_problem(
    expected: Sequence[tuple[str, str, Any]], actual: list[tuple[str, str, Any]]
) -> str | None:
    first = None
    for number, (want, got) in enumerate(zip(expected, actual, strict=False), 1):
        if want[:2] != got[:2]:
            first = f"task {number}: expected {want[1]} on {want[0]}, got {got[1]} on {got[0]}"
        elif want[2] is not ANY:
            first = _mismatch(want[2], got[2], f"task {number}: data")
        if first:
            break
    if first is None and len(expected) == len(actual):
        return None
    lines = [f"expected {len(expected)} task(s):"]
    lines += [f"    {action} on {agent}" for agent, action, _ in expected]
    lines += [f"  submitted {len(actual)}:"]
    lines += [f"    {action} on {agent} {_dump(data)}" for agent, action, data in actual]
    return "\n".join(lines + ([f"  first difference: {first}"] if first else []))


def _commands_problem(
    expected: Sequence[tuple[str, ...]], actual: list[tuple[str, ...]]
) -> str | None:
    if list(expected) == actual:
        return None
    lines = [f"expected {len(expected)} command(s):"]
    lines += [f"    {shlex.join(argv)}" for argv in expected]
    lines += [f"  would run {len(actual)}:", *(f"    {shlex.join(argv)}" for argv in actual)]
    return "\n".join(lines)


def _check_cascade(expect: Expect, out: Outcome) -> list[str]:
    problems = []
    if expect.emits is not None:
        problems.append(_emits_problem(expect.emits, out.emits) or "")
    if expect.tasks is not None:
        problems.append(_tasks_problem(expect.tasks, out.tasks) or "")
    if expect.commands is not None:
        problems.append(_commands_problem(expect.commands, out.commands) or "")
    if expect.steps is not None and list(expect.steps) != out.steps:
        problems.append(f"expected steps: {_names(expect.steps)}\n  would run: {_names(out.steps)}")
    if expect.cut is not None and expect.cut != bool(out.cuts):
        cuts = "; ".join(out.cuts)
        problems.append(
            "expected a loop-guard cut; there is none"
            if expect.cut
            else f"expected no loop-guard cut; {cuts}"
        )
    if expect.errors != bool(out.errors):
        errors = "".join(f"\n    {error}" for error in out.errors)
        problems.append(
            "expected an error; there is none" if expect.errors else f"unexpected error(s):{errors}"
        )
    return [problem for problem in problems if problem]


def _router(test: RouteTest, explainer: Explainer) -> RouterInfo | None:
    """Return where the test decides from: its ``router:`` over the command line's."""
    if not test.router:
        return None
    given = dict(test.router)
    if "node" in given:
        given["node"] = node_value(given["node"])
    return replace(explainer.context.router, **given)


def _env(test: RouteTest, explainer: Explainer) -> dict[str, str] | None:
    """Return ``env`` for the test: its ``env:`` over the command line's --env/--env-file."""
    if test.env is None:
        return None
    return {**explainer.context.env, **dict(test.env)}


def check(test: RouteTest, explainer: Explainer) -> list[str]:
    """Return what differs between a test's expectations and the plan of its event."""
    router, env = _router(test, explainer), _env(test, explainer)
    plan = explainer.explain(test.channel, test.data, router, env)
    result = outcome(plan)
    return _check_routes(test.expect, result) + _check_cascade(test.expect, result)


def default_files(folders: list[Path]) -> list[Path]:
    """Return tests/*.yml and tests/*.yaml of each routes folder, byte-wise by name."""
    found = [folder / "tests" for folder in folders if (folder / "tests").is_dir()]
    return [path for tests in found for path in route_files(tests)]


def known_names(explainer: Explainer) -> set[str]:
    """Return the names a test may give in fire/not_fire: routes and events:<folder>."""
    names = {route.name for route in explainer.routes}
    for base in explainer.events_dirs:
        if base.is_dir():
            names |= {convention_label(entry) for entry in base.iterdir() if entry.is_dir()}
    return names


def _none_found(searched: list[Path]) -> str:
    if not searched:
        return "error: no route test files: no routes folder (--routes DIR) and none given"
    where = ", ".join(str(folder) for folder in searched)
    return f"error: no route test files in {where} (*.yml, *.yaml; or name the files)"


def run(
    files: list[Path], explainer: Explainer, out: TextIO, searched: list[Path] | None = None
) -> int:
    """Run every test of ``files``; print failures and a summary; return 0 or 1.

    ``searched`` names the folders the default files were looked for in, for the message
    when there are none.
    """
    if not files:
        print(_none_found(searched or []), file=out)
        return 1
    known, passed, failed, invalid = known_names(explainer), 0, 0, 0
    for path in files:
        tests, diagnostics = load_tests(path, known)
        invalid += len(diagnostics)
        for diagnostic in diagnostics:
            print(diagnostic, file=out)
        for test in tests:
            problems = check(test, explainer)
            passed += not problems
            failed += bool(problems)
            if problems:
                print(f"{test.file}:{test.line}: FAIL {test.name}", file=out)
                for problem in problems:
                    print(textwrap.indent(problem, "  "), file=out)
    # A test in error neither passed nor failed: count it, or the last line reads as success.
    errors = f", {invalid} error{'s' if invalid > 1 else ''}" if invalid else ""
    print(f"{passed} passed, {failed} failed{errors}", file=out)
    return 1 if failed or invalid else 0
