"""Equal templates, values and patterns of routes are one object, while a route holds it."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

from eventrouter.config.loader import load_routes
from eventrouter.config.templates import condition_of, text_of
from eventrouter.config.valuetemplates import Constant, value_of
from eventrouter.model import EmitAction, RunAction
from eventrouter.service.reloading import Changes, compare
from eventrouter.support.sharing import SharedTable
from tests.routerproc import handler
from tests.routerproc import write_routes as write

ROUTES = """\
routes:
  - name: {name}
    on: module/{{module}}/event/backup-finished
    when: payload.status == "ok" and payload.node is defined
    do:
      - emit:
          channel: "module/{{{{ match.module }}}}/event/backup-announced"
          payload:
            module: "{{{{ match.module }}}}"
            node: "{{{{ payload.node | default(0) }}}}"
            kind: full
      - run: ../handlers/h
        env:
          BACKUP_NODE: "{{{{ payload.node | default(0) }}}}"
"""


class _Thing:
    """A weakly referable object."""


def test_a_table_gives_one_object_per_key_and_forgets_what_nobody_holds() -> None:
    table: SharedTable[_Thing] = SharedTable()
    built: list[_Thing] = []

    def build() -> _Thing:
        built.append(_Thing())
        return built[-1]

    first = table.get("k", build)
    assert table.get("k", build) is first
    assert len(built) == 1
    del first, built[:]
    gc.collect()
    assert len(table) == 0
    assert table.get("k", _Thing) is not None


def test_a_build_that_fails_is_not_kept() -> None:
    table: SharedTable[_Thing] = SharedTable()
    attempts = []

    def broken() -> _Thing:
        attempts.append(1)
        raise ValueError("bad")

    for _ in range(2):
        with contextlib.suppress(ValueError):
            table.get("k", broken)
    assert len(attempts) == 2
    assert len(table) == 0


def test_two_files_writing_the_same_templates_share_them(tmp_path: Path) -> None:
    handler(tmp_path / "handlers" / "h")
    routes = tmp_path / "routes.d"
    write(routes, "a.yml", ROUTES.format(name="announce-a"))
    write(routes, "b.yml", ROUTES.format(name="announce-b"))
    result = load_routes([routes], {})
    assert result.ok, result.diagnostics
    first, second = result.routes
    assert first.when is second.when
    assert first.patterns[0] is second.patterns[0]
    emit_a, run_a = first.actions
    emit_b, run_b = second.actions
    assert isinstance(emit_a, EmitAction) and isinstance(emit_b, EmitAction)
    assert emit_a.channel is emit_b.channel
    items_a = dict(emit_a.payload.part.items)  # type: ignore[union-attr]
    items_b = dict(emit_b.payload.part.items)  # type: ignore[union-attr]
    assert all(items_a[key] is items_b[key] for key in ("module", "node", "kind"))
    assert isinstance(run_a, RunAction) and isinstance(run_b, RunAction)
    # The same expression as a payload value and as an env template: each kind its own.
    assert run_a.env[0][1] is run_b.env[0][1]
    assert first.file is not second.file
    # What they render is what each route would render alone.
    context = {"payload": {"node": 3}, "match": {"module": "mail1"}}
    assert emit_a.payload.render(context) == {"module": "mail1", "node": 3, "kind": "full"}


def test_scalars_equal_as_numbers_stay_of_their_own_type() -> None:
    one, true, one_float = value_of(1), value_of(True), value_of(1.0)
    assert [type(v.part.value) for v in (one, true, one_float)] == [int, bool, float]  # type: ignore[union-attr]
    assert value_of(1) is one
    assert value_of("x", "payload") is not value_of("x", "data")
    assert isinstance(value_of("x").part, Constant)


def test_equal_sources_with_different_labels_are_different_conditions() -> None:
    plain = condition_of("payload.node")
    labelled = condition_of("payload.node", "{{ payload.node }}")
    assert plain is condition_of("payload.node")
    assert plain is not labelled
    assert labelled.label == "{{ payload.node }}"
    assert text_of("a {{ b }}") is text_of("a {{ b }}")


def test_what_a_running_router_asks_of_a_route_keeps_no_fingerprint(tmp_path: Path) -> None:
    # The fingerprints of 10,000 routes held about 10 MiB; only the deep check needs them.
    handler(tmp_path / "handlers" / "h")
    routes = tmp_path / "routes.d"
    text = ROUTES.format(name="announce-a").replace(
        'BACKUP_NODE: "{{ payload.node | default(0) }}"', 'BACKUP_NODE: "{{ env.NODE_ID }}"'
    )
    write(routes, "a.yml", text)
    result = load_routes([routes], {})
    assert result.ok, result.diagnostics
    [route] = result.routes
    assert compare(result.routes, result.routes) == Changes([], [], [])
    assert "digest" not in vars(route)  # the same object: nothing to hash
    assert route.reads_env()
    digest = route.digest
    assert "fingerprint" not in vars(route)
    # The same answers as from the fingerprint the deep check keeps.
    assert "env" in repr(route.fingerprint)
    assert route.digest == digest
