"""`eventrouter explain`: the dry run, through the real CLI, with no Redis anywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.routerproc import clean_env, run_here, write_step

CASCADE = """
routes:
  - name: added
    on: cluster/event/module-added
    when: payload.module is defined
    do:
      - emit:
          channel: cluster/event/module-domain-changed
          payload: {modules: ["{{ payload.module }}"], node: "{{ payload.node }}"}
  - name: domains
    on: cluster/event/module-domain-changed
    do:
      - run: h
        env: {FIRST: "{{ payload.modules[0] }}"}
  - name: unrelated
    on: node/{node}/event/fqdn-changed
    do: [{run: h}]
  - name: ping
    on: x/event/ping
    do: [{emit: {channel: x/event/ping}}]
"""


def explain(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `eventrouter explain` with no Redis configured or reachable."""
    # REDIS_ADDRESS points nowhere: using it would fail.
    return run_here("explain", *args, env=clean_env(REDIS_ADDRESS="127.0.0.1:1"), stdin=stdin)


def setup(tmp_path: Path) -> Path:
    write_step(tmp_path / "h" / "10first", "true")
    write_step(tmp_path / "h" / "20second", "true")
    (tmp_path / "h" / "15notexec").write_text("#!/bin/sh\n")
    (tmp_path / "h" / ".hidden").write_text("")
    (tmp_path / "r.yml").write_text(CASCADE)
    return tmp_path


def test_text_shows_condition_rendered_event_cascade_and_steps(tmp_path: Path) -> None:
    routes = setup(tmp_path)
    done = explain(
        "--routes", str(routes), "cluster/event/module-added", '{"module": "mail1", "node": 2}'
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "event cluster/event/module-added  (source cluster, name module-added" in out
    assert f"+ route added fires  ({routes / 'r.yml'}:3)" in out
    assert "when: payload.module is defined -> true" in out
    assert '1. emit cluster/event/module-domain-changed {"modules": ["mail1"], "node": 2}' in out
    # the cascade, indented under the emit
    cascade = out.split("1. emit cluster/event/module-domain-changed", 1)[1]
    assert "+ route domains fires" in cascade
    assert "env FIRST=mail1" in cascade
    steps = [line.strip() for line in cascade.splitlines() if "step " in line or "skip " in line]
    assert steps == [
        "skip .hidden: a hidden name (leading .), never run",
        "step 10first",
        "skip 15notexec: not executable",
        "step 20second",
    ]
    assert out.endswith("  . 3 other route(s) do not match (--verbose lists them)\n")


def test_when_false_and_template_errors_are_shown(tmp_path: Path) -> None:
    routes = setup(tmp_path)
    done = explain("--routes", str(routes), "cluster/event/module-added", '{"node": 2}')
    assert "- route added does not fire" in done.stdout
    assert "when: payload.module is defined -> false" in done.stdout
    assert "nothing would run" in done.stdout
    done = explain("--routes", str(routes), "cluster/event/module-domain-changed", "{}")
    assert "error:" in done.stdout and "modules" in done.stdout


def test_loop_guard_cut_is_marked(tmp_path: Path) -> None:
    routes = setup(tmp_path)
    done = explain("--routes", str(routes), "--max-depth", "3", "x/event/ping", "{}")
    assert done.stdout.count("emit x/event/ping") == 4
    assert "CUT by the loop guard: derived-event chain deeper than 3" in done.stdout


def test_json_carries_the_same_tree(tmp_path: Path) -> None:
    routes = setup(tmp_path)
    done = explain(
        "--routes",
        str(routes),
        "--json",
        "cluster/event/module-added",
        "-",
        stdin='{"module": "mail1", "node": 2}',
    )
    plan = json.loads(done.stdout)
    fired = [route for route in plan["routes"] if route["fires"]]
    assert [route["name"] for route in fired] == ["added"]
    emit = fired[0]["actions"][0]
    assert emit["payload"] == {"modules": ["mail1"], "node": 2}
    derived = [r for r in emit["cascade"]["routes"] if r["fires"]]
    assert derived[0]["name"] == "domains"
    assert [s["name"] for s in derived[0]["actions"][0]["steps"] if s["runs"]] == [
        "10first",
        "20second",
    ]


def test_convention_folder_and_refused_name(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_step(events / "certificate-changed" / "10log", "cat")
    (tmp_path / "empty").mkdir()
    args = ["--routes", str(tmp_path / "empty"), "--events-dir", str(events)]
    done = explain(*args, "module/traefik1/event/certificate-changed", "plain")
    assert "payload not JSON" in done.stdout
    assert f"+ events folder events:{events / 'certificate-changed'} fires" in done.stdout
    assert "step 10log" in done.stdout
    done = explain(*args, "module/x/event/../certificate-changed", "{}")
    assert "event name '../certificate-changed' refused" in done.stdout
    assert "nothing would run" in done.stdout


def test_invalid_routes_exit_1_with_the_errors(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text("routes:\n  - name: x\n    on: a/event/b\n    do: []\n")
    done = explain("--routes", str(tmp_path), "a/event/b", "{}")
    assert done.returncode == 1
    assert f"{tmp_path / 'r.yml'}:4: error:" in done.stderr


def test_condition_judged_by_its_value_not_its_rendered_text(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: keys\n    on: a/event/b\n    when: payload.keys()\n"
        "    do: [{emit: {channel: out/event/c}}]\n"
    )
    done = explain("--routes", str(tmp_path), "--json", "a/event/b", "{}")
    assert done.returncode == 0, done.stderr
    [route] = json.loads(done.stdout)["routes"]
    assert route["matched"] and not route["fires"]
    done = explain("--routes", str(tmp_path), "a/event/b", "{}")
    assert "- route keys does not fire" in done.stdout
    assert "nothing would run" in done.stdout
    done = explain("--routes", str(tmp_path), "a/event/b", '{"k": 1}')
    assert "+ route keys fires" in done.stdout


def test_a_false_condition_is_said_once(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: failed\n    on: a/event/b\n    when: payload.status == 'failed'\n"
        "    do: [{emit: {channel: out/event/c}}]\n"
    )
    done = explain("--routes", str(tmp_path), "a/event/b", '{"status": "ok"}')
    assert "    when: payload.status == 'failed' -> false\n" in done.stdout
    assert "(false)" not in done.stdout
    # a value that is not a boolean is shown, and that it counts as false
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: zero\n    on: a/event/b\n    when: payload.count\n"
        "    do: [{emit: {channel: out/event/c}}]\n"
    )
    done = explain("--routes", str(tmp_path), "a/event/b", '{"count": 0}')
    assert "    when: payload.count -> 0 (false)\n" in done.stdout


def test_a_failing_payload_template_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: r\n    on: a/event/b\n"
        "    do: [{emit: {channel: out/event/c, payload: {a: '{{ foo }}'}}}]\n"
    )
    done = explain("--routes", str(tmp_path), "a/event/b", "{}")
    assert (
        "error: emit out/event/c: payload.a: template '{{ foo }}' failed: undefined: "
        "'foo' is undefined\n" in done.stdout
    ), done.stdout


def test_payload_that_defeats_the_json_parser_is_not_json(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_step(events / "deep" / "10log", "cat")
    (tmp_path / "empty").mkdir()
    args = ["--routes", str(tmp_path / "empty"), "--events-dir", str(events)]
    deep = "[" * 100_000 + "]" * 100_000
    done = explain(*args, "module/m/event/deep", "-", stdin=deep)
    assert done.returncode == 0, done.stderr
    assert "payload not JSON" in done.stdout
    assert f"+ events folder events:{events / 'deep'} fires" in done.stdout


def test_event_name_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (tmp_path / "empty").mkdir()
    args = ["--routes", str(tmp_path / "empty"), "--events-dir", str(events)]
    done = explain(*args, "module/m/event/" + "n" * 300, "{}")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "refused" in done.stdout and "nothing would run" in done.stdout
