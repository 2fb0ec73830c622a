"""The ``exec:`` action: one command, each argument a template, run without a shell as a step.

Route files (both forms and their errors), `check` (the program exists and may run),
`explain` (the rendered argument list) and route tests (``commands:``) in process; the real
daemon with real commands for what a step gets: arguments as rendered, the environment, the
payload on stdin, its own process group, the output with its levels, the failure journal,
``retry:``, the timeout, and death with the router.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from eventrouter.cli.main import main
from eventrouter.config.loader import load_routes
from eventrouter.model import ExecAction
from tests.routerproc import (
    Router,
    clean_env,
    lines,
    run_here,
    wait_for,
    write_routes,
    write_step,
)

RECORDER = """\
{{ printf 'argv:'; for a in "$@"; do printf ' [%s]' "$a"; done; echo
  echo "stdin:$(cat)"
  echo "event:$AGENT_EVENT_NAME $AGENT_EVENT_SOURCE module:$MODULE_ID extra:$EXTRA"
  echo "cwd:$(pwd) group:$(cut -d' ' -f5 /proc/$$/stat) pid:$$"
}} >> {out}
echo "<3>boom $1"
echo "<7>quiet detail"
exit "${{EXIT:-0}}"
"""


def load(tmp_path: Path, text: str) -> tuple[list[ExecAction], list[str]]:
    (tmp_path / "r.yml").write_text(textwrap.dedent(text))
    result = load_routes([tmp_path])
    actions = [a for r in result.routes for a in r.actions if isinstance(a, ExecAction)]
    return actions, [str(d) for d in result.diagnostics]


# --- route files ------------------------------------------------------------------------------


def test_list_and_mapping_forms(tmp_path: Path) -> None:
    actions, problems = load(
        tmp_path,
        """
        routes:
          - name: r
            on: a/event/b
            do:
              - exec: [systemctl, --user, try-reload-or-restart, "{{ env.MODULE_ID }}.service"]
              - exec:
                  command: [bin/reload, 3, "{{ payload.x }}"]
                  timeout: 30s
                  env: {MODE: "{{ payload.mode }}"}
        """,
    )
    assert problems == []
    first, second = actions
    assert first.program == "systemctl" and first.resolve() is None
    assert [arg.source for arg in first.args] == ["--user", "try-reload-or-restart",
                                                  "{{ env.MODULE_ID }}.service"]  # fmt: skip
    assert second.resolve() == str(tmp_path / "bin" / "reload")  # beside the route file
    assert second.timeout == 30.0 and [key for key, _ in second.env] == ["MODE"]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ('exec: "systemctl --user reload x"', "runs without a shell: give its arguments as a "
         "list, not a command line: exec: [systemctl, --user, reload, x]"),
        ('exec: ["{{ payload.program }}", x]', "is a template; write the program out"),
        ("exec: []", "expected a list of arguments"),
        ("exec: [ls]\n        timeout: 3s", "timeout: unknown key 'timeout' beside exec; options "
         "go in the mapping form"),
        ("exec: {command: [ls], tmeout: 3s}", "unknown key 'tmeout' (did you mean 'timeout'?)"),
        ("exec: {command: [ls, true]}", "argument 1: expected a string, got a boolean"),
        ("exec: {command: [ls], env: {1X: a}}", "'1X' is not a valid environment variable name"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_the_fix(tmp_path: Path, action: str, message: str) -> None:
    _, problems = load(
        tmp_path, f"routes:\n  - name: r\n    on: a/event/b\n    do:\n      - {action}\n"
    )
    line = 6 if "beside" in message else 5  # the key beside exec is on the next line
    assert len(problems) == 1 and f"{tmp_path / 'r.yml'}:{line}: error: " in problems[0]
    assert message in problems[0]


# --- check, explain, test -------------------------------------------------------------------------


def routes_with(tmp_path: Path, command: str) -> Path:
    routes = tmp_path / "routes"
    write_routes(routes, "r.yml", f"""
        routes:
          - name: reload
            on: module/{{module}}/event/settings-changed
            do:
              - exec: {command}
        """)  # fmt: skip
    return routes


def test_check_verifies_the_program_exists_and_may_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_step(tmp_path / "routes" / "bin" / "reload", "exit 0")
    found = routes_with(tmp_path, "[sh, -c, 'exit 0']")
    assert main(["check", "--routes", str(found)]) == 0
    found = routes_with(tmp_path, "[bin/reload, x]")
    assert main(["check", "--routes", str(found)]) == 0
    capsys.readouterr()

    script.chmod(0o644)
    main(["check", "--routes", str(found)])
    out = capsys.readouterr().out
    assert f"r.yml:6: error: route reload: exec: command {script} is not executable" in out

    gone = routes_with(tmp_path, "[bin/gone, x]")
    assert main(["check", "--routes", str(gone)]) == 1
    out = capsys.readouterr().out
    assert f"command {script.parent}/gone does not exist (relative to the route file's" in out

    missing = routes_with(tmp_path, "[no-such-program-here, x]")
    assert main(["check", "--routes", str(missing)]) == 1
    out = capsys.readouterr().out
    assert (
        "r.yml:6: error: route reload: exec: command 'no-such-program-here' is not found on PATH"
        in out
    )


def test_explain_and_route_tests_show_the_rendered_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = routes_with(
        tmp_path, '[systemctl, --user, reload, "{{ match.module }}.service", "{{ payload.x }}"]'
    )
    channel, payload = "module/mail1/event/settings-changed", '{"x": "a b; c"}'

    assert main(["explain", "--routes", str(routes), channel, payload]) == 0
    assert "1. exec systemctl --user reload mail1.service 'a b; c'" in capsys.readouterr().out
    assert main(["explain", "--routes", str(routes), "--json", channel, payload]) == 0
    [action] = json.loads(capsys.readouterr().out)["routes"][0]["actions"]
    assert action["argv"] == ["systemctl", "--user", "reload", "mail1.service", "a b; c"]

    write_routes(routes / "tests", "t.yml", """
        tests:
          - name: reloads the module's unit
            event: {channel: module/mail1/event/settings-changed, payload: {x: 1}}
            expect:
              commands: [[systemctl, --user, reload, mail1.service, 1]]
          - name: a wrong expectation fails
            event: {channel: module/mail1/event/settings-changed, payload: {x: 1}}
            expect:
              commands: [[systemctl, --user, restart, mail1.service, 1]]
        """)  # fmt: skip
    assert main(["test", "--routes", str(routes)]) == 1
    out = capsys.readouterr().out
    assert "FAIL a wrong expectation fails" in out and "1 passed, 1 failed" in out
    assert "would run 1:\n      systemctl --user reload mail1.service 1" in out


# --- the daemon ------------------------------------------------------------------------------


def test_a_command_gets_what_a_step_gets(tmp_path: Path, redis_url: str) -> None:
    out, state, bin_dir = tmp_path / "out", tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    (state / "environment").write_text("MODULE_ID=mail1\n")
    write_step(bin_dir / "recorder", RECORDER.format(out=out))
    write_routes(tmp_path / "routes", "r.yml", """
        routes:
          - name: reload
            on: module/{m}/event/thing-changed
            retry: {attempts: 2, backoff: 10ms}
            do:
              - exec:
                  command: [recorder, "{{ payload.arg }}", two words,
                            "{{ env.MODULE_ID }}.service", "$HOME;*"]
                  env: {EXTRA: "{{ match.m }}", EXIT: "{{ payload.exit | default(0) }}"}
        """)  # fmt: skip
    env = clean_env(AGENT_STATE_DIR=str(state), PATH=f"{bin_dir}:{os.environ['PATH']}")
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router(args, tmp_path / "log", env).ready()
    try:
        payload = '{"arg": "x y", "exit": 0}'
        run_here(
            "publish", "--redis", redis_url, "--raw", "module/ldap1/event/thing-changed", payload
        )
        wait_for(lambda: len(lines(out)) == 4, what="the command")
        argv, stdin, event, place = lines(out)
        assert argv == "argv: [x y] [two words] [mail1.service] [$HOME;*]"  # no shell
        assert stdin == f"stdin:{payload}"
        assert event == "event:thing-changed module/ldap1 module:mail1 extra:ldap1"
        cwd, group, pid = place.split()
        assert cwd == f"cwd:{state}" and group.split(":")[1] == pid.split(":")[1]
        log = router.wait_log(r"route reload: event .* run ok")
        assert "ERROR" in log and "boom x y" in log and "quiet detail" not in log

        run_here("publish", "--redis", redis_url, "--raw", "module/ldap1/event/thing-changed",
                '{"arg": "z", "exit": 3}')  # fmt: skip
        router.wait_log("failure recorded as")
        assert len(lines(out)) == 12  # retried once: two more runs
        listed = run_here("failures", "--redis", redis_url, "--json")
        [entry] = json.loads(listed.stdout)
        assert entry["route"] == "reload" and entry["action"] == "exec recorder"
        assert entry["status"] == "retries exhausted (2 attempts): exit status 3"
        assert entry["step"] == "recorder" and "boom z" in entry["tail"]
    finally:
        router.close()


def test_a_command_past_its_timeout_is_stopped_and_journaled(
    tmp_path: Path, redis_url: str
) -> None:
    write_routes(tmp_path / "routes", "r.yml", """
        routes:
          - name: slow
            on: a/event/b
            do:
              - exec: {command: [sleep, "30"], timeout: 300ms}
        """)  # fmt: skip
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router(args, tmp_path / "log").ready()
    try:
        run_here("publish", "--redis", redis_url, "--raw", "a/event/b", "{}")
        log = router.wait_log("failure recorded as")
        assert "timed out after 0.3s; stopping it" in log
        [entry] = json.loads(run_here("failures", "--redis", redis_url, "--json").stdout)
        assert entry["status"] == "timed out"
    finally:
        router.close()


def test_a_command_dies_with_a_killed_router(tmp_path: Path, redis_url: str) -> None:
    pid_file = tmp_path / "pid"
    script = write_step(tmp_path / "sleeper", f"echo $$ > {pid_file}\nsleep 60\n")
    write_routes(tmp_path / "routes", "r.yml", f"""
        routes:
          - name: sleeper
            on: a/event/b
            do: [{{exec: [{script}]}}]
        """)  # fmt: skip
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router(args, tmp_path / "log").ready()
    try:
        run_here("publish", "--redis", redis_url, "--raw", "a/event/b", "{}")
        pid = int(wait_for(lambda: lines(pid_file), what="the command")[0])
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(5)
        wait_for(lambda: not _alive(pid), timeout=10, what="the command to be stopped")
    finally:
        router.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
