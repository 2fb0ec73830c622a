"""What a new user trips on in the first ten minutes (issue 10, "What a newcomer trips on")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import redis

from eventrouter.config import payloads
from eventrouter.redis.ask import ask
from eventrouter.redis.binaries import find_server_binary
from eventrouter.runtime import control
from eventrouter.runtime.journal import Failure
from tests.cluster import Topology
from tests.conftest import _missing, free_port
from tests.routerproc import REPO, Router, clean_env, run_cli, run_here, wait_for

ONE_ROUTE = """
routes:
  - name: a
    on: x/event/y-changed
    do: [{emit: {channel: z/event/q-changed}}]
"""


def test_check_with_no_routes_and_no_events_folder_is_an_error(tmp_path: Path) -> None:
    done = run_here("check", cwd=tmp_path)
    assert done.returncode == 1
    assert "nothing to check" in done.stderr
    assert "routes.d" in done.stderr  # the folder it looked in


def test_check_of_an_empty_folder_named_explicitly_names_it(tmp_path: Path) -> None:
    done = run_here("check", "--routes", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert f"no routes in {tmp_path}" in done.stderr


def test_explain_says_no_routes_were_loaded(tmp_path: Path) -> None:
    done = run_here(
        "explain", "cluster/event/module-added", '{"module": "a", "node": 1}', cwd=tmp_path
    )
    assert done.returncode == 0
    assert "no routes loaded" in done.stdout
    assert "routes.d" in done.stdout


def test_run_with_nothing_to_route_warns_naming_the_folders(tmp_path: Path, redis_url: str) -> None:
    router = Router(
        ["run", "--redis", redis_url, "--state-dir", str(tmp_path / "s")], tmp_path / "log"
    )
    try:
        router.wait_log(r"WARNING .*nothing to route: no routes in routes\.d, and no --events-dir")
    finally:
        router.close()


def test_the_licence_is_an_spdx_string() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-3.0-or-later"


# --- 5: help that says what the commands do --------------------------------------------------


def test_journal_commands_promise_no_embedded_fallback_for_the_journal() -> None:
    for command in ("failures", "retry"):
        text = " ".join(run_cli(command, "--help").stdout.split())
        assert "else the embedded server, else the local journal file" not in text
        assert "failures.jsonl" in text, text


def test_publish_help_says_what_its_count_is() -> None:
    text = " ".join(run_here("publish", "--help").stdout.split())
    assert "one per matching pattern" in text
    assert "how many subscribers" not in text


def test_channel_arguments_have_help() -> None:
    for command in ("publish", "explain"):
        text = run_cli(command, "--help").stdout
        positionals = text.split("positional arguments:")[1].splitlines()
        row = next(line for line in positionals if line.strip().startswith("CHANNEL"))
        assert len(row.split()) > 1, text  # a description after the name


def test_routes_lists_the_events_folders_too() -> None:
    examples = REPO / "examples" / "ns8-cluster"
    done = run_here(
        "routes", "--routes", str(examples / "routes.d"), "--events-dir", str(examples / "events")
    )
    assert done.returncode == 0, done.stderr
    assert "events:acl-changed\t*/event/acl-changed\t" in done.stdout


# --- 6: messages -------------------------------------------------------------------------------


def test_a_tab_in_the_indentation_says_yaml_allows_no_tabs(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text("routes:\n  - name: a\n\ton: x/event/y-changed\n")
    done = run_here("check", "--routes", str(tmp_path))
    assert done.returncode == 1
    assert f"{tmp_path / 'r.yml'}:3: error: invalid YAML: a tab at column 1" in done.stdout
    assert "YAML does not allow tabs" in done.stdout
    assert "nothing to check" not in done.stderr  # the error says it all


def test_a_comments_only_file_has_no_routes(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("# routes to come\n")
    (tmp_path / "b.yml").write_text(ONE_ROUTE)
    done = run_here("check", "--routes", str(tmp_path))
    assert done.returncode == 0
    assert (
        done.stdout == f"{tmp_path / 'a.yml'}:1: warning: no routes: the file holds only comments\n"
    )


def test_one_route_checked_is_singular(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(ONE_ROUTE)
    done = run_here("check", "--routes", str(tmp_path))
    assert done.stderr == "1 route checked: 0 errors, 0 warnings\n"


def test_redis_errors_read_as_one_sentence(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    done = run_here("failures", "--redis", url)
    assert done.returncode == 1
    assert ". (" not in done.stderr and ".;" not in done.stderr, done.stderr
    router = Router(["run", "--redis", url, "--state-dir", str(tmp_path / "s")], tmp_path / "log")
    try:
        log = router.wait_log("cannot reach Redis")
    finally:
        router.close()
    assert ".;" not in log, log


def test_retry_says_retrying_only_once_asked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    failure = Failure(
        id="1-1", time=1.0, started=1.0, instance="h", route="r", route_file="r.yml",
        route_line=2, action="run h", action_index=0, step="10s", status="exit 1",
        reason="failed", channel="x/event/y-changed", payload="{}", payload_b64=None, tail=(),
    )  # fmt: skip
    (state / "failures.jsonl").write_text(json.dumps(failure.to_json()) + "\n")
    done = run_here("retry", "--state-dir", str(state), "1-1")
    assert done.returncode == 1
    assert "no Redis to reach it" in done.stderr, done.stderr
    assert "retrying" not in done.stdout


# --- 1: make run is clean with no extra settings -----------------------------------------------


def _make_run_command() -> tuple[dict[str, str], list[str]]:
    """Return the environment assignments and arguments of `make run`'s router command."""
    shown = subprocess.run(
        ["make", "-n", "-s", "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    line = next(row for row in shown.splitlines() if "eventrouter run" in row)
    words = shlex.split(line)
    assignments = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
    start = next(i for i, word in enumerate(words) if word.endswith("bin/eventrouter"))
    return assignments, words[start + 1 :]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_handles_module_removed_without_an_error(short_tmp: Path) -> None:
    assignments, args = _make_run_command()
    env = clean_env(**{**assignments, "EVENTROUTER_STATE_DIR": str(short_tmp)})
    router = Router(args, short_tmp / "log", env)
    try:
        router.wait_log(r"subscribed to \d+ pattern", timeout=20)
        payload = '{"module": "traefik1", "node": 1}'
        published = run_here("publish", "cluster/event/module-removed", payload, env=env)
        assert published.returncode == 0, published.stderr
        # The last line of the handler's last step: everything before it is in the log.
        log = router.wait_log(r"module-removed .* would reload the proxy configuration")
    finally:
        router.close()
    assert " ERROR " not in log, log


# --- issue 15, "What a newcomer hit" -----------------------------------------------------------


def _failure(**fields: object) -> Failure:
    base: dict[str, object] = dict(
        id="1-1", time=1.0, started=1.0, instance="h", route="certificate-reload",
        route_file="r.yml", route_line=2, action="task reload-certificate on module/mail1",
        action_index=1, step=None, status="task failed",
        reason="agent module/mail1 is not listening", channel="x/event/y-changed",
        payload="{}", payload_b64=None, tail=(),
    )  # fmt: skip
    base.update(fields)
    return Failure(**base)  # type: ignore[arg-type]


def _journal_file(state: Path, failures: list[Failure]) -> Path:
    state.mkdir(mode=0o700, exist_ok=True)
    lines = (json.dumps(item.to_json()) + "\n" for item in failures)
    (state / "failures.jsonl").write_text("".join(lines))
    return state


def test_failures_shows_why_a_run_failed(tmp_path: Path) -> None:
    state = _journal_file(
        tmp_path / "state",
        [
            _failure(id="1-1"),
            _failure(
                id="2-1",
                status="template error",
                action="when",
                action_index=0,
                reason="when: 'dict object' has no attribute 'domain'",
            ),
        ],
    )
    done = run_here("failures", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "  reason: agent module/mail1 is not listening\n" in done.stdout, done.stdout
    assert "  reason: when: 'dict object' has no attribute 'domain'\n" in done.stdout


def _closed_pipe(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout a pipe whose reading end is already closed (`| head -0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "eventrouter", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=cwd,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)


EXAMPLES = [
    "--routes",
    "examples/ns8-cluster/routes.d",
    "--events-dir",
    "examples/ns8-cluster/events",
]


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["--help"], 0),  # argparse's own printing ignores a closed pipe
        (["routes", *EXAMPLES], 141),  # as a command killed by SIGPIPE: 128 + 13
        (["explain", *EXAMPLES, "cluster/event/module-added", '{"module": "a", "node": 1}'], 141),
        (["test", *EXAMPLES], 141),
        (["failures", "--state-dir", "STATE"], 141),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else str(value),
)
def test_a_closed_pipe_ends_a_command_quietly(args: list[str], status: int, tmp_path: Path) -> None:
    state = _journal_file(tmp_path / "state", [_failure(id=f"{n}-1") for n in range(1, 400)])
    done = _closed_pipe(*(str(state) if arg == "STATE" else arg for arg in args))
    assert done.stderr == ""
    assert done.returncode == status


def test_a_pipe_closed_after_the_first_line_ends_failures_quietly(tmp_path: Path) -> None:
    state = _journal_file(tmp_path / "state", [_failure(id=f"{n}-1") for n in range(1, 2000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrouter", "failures", "--limit", "2000", "--state-dir", state],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    with proc.stderr:
        errors = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert first.startswith(b"1999-1  ")
    assert errors == ""


def test_publish_warns_of_a_channel_no_route_can_name(redis_url: str) -> None:
    done = run_here("publish", "--redis", redis_url, "mail1/backup-finished", "{}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "published mail1/backup-finished: 0 receiver(s)\n"
    assert "warning: 'mail1/backup-finished' is not an event channel" in done.stderr
    assert "<source>/event/<name>" in done.stderr
    assert "mail1/event/backup-finished" in done.stderr  # what was probably meant


@pytest.mark.parametrize("channel", ["/event/x-changed", "a/event/"])
def test_publish_warns_of_an_event_channel_with_a_part_missing(
    channel: str, redis_url: str
) -> None:
    done = run_here("publish", "--raw", "--redis", redis_url, channel, "{}")
    assert done.returncode == 0, done.stderr
    assert f"warning: {channel!r} is not an event channel" in done.stderr


def test_publish_of_an_event_channel_says_nothing_more(redis_url: str) -> None:
    done = run_here("publish", "--redis", redis_url, "module/mail1/event/backup-finished", "{}")
    assert (done.returncode, done.stderr) == (0, "")


def test_a_router_that_does_not_answer_reads_as_english(redis_url: str) -> None:
    done = run_here("status", "--redis", redis_url, "--instance", "nosuch")
    assert done.returncode == 1
    assert "router 'nosuch' did not answer on " in done.stderr, done.stderr
    assert "answered" not in done.stderr


def test_status_calls_a_replica_a_replica(tmp_path: Path) -> None:
    binary = find_server_binary()
    if binary is None:
        _missing("redis-server/valkey-server")
    topology = Topology(binary, size=2).start()
    master, replica = topology.nodes
    env = clean_env(EVENTROUTER_STATE_DIR=str(tmp_path / "state"))
    args = ["run", "--redis", replica.url, "--publish-redis", master.url, "--instance", "n2"]
    router = Router(args, tmp_path / "log", env)
    try:
        router.ready()
        text = run_here("status", "--redis", replica.url, "--instance", "n2")
        answer = run_here("status", "--redis", replica.url, "--instance", "n2", "--json")
    finally:
        router.close()
        topology.stop()
    assert text.returncode == 0, text.stderr
    assert f"  subscribe {replica.url}: connected, replica, " in text.stdout, text.stdout
    assert "slave" not in text.stdout
    assert json.loads(answer.stdout)["redis"]["subscribe"]["role"] == "replica"


def test_with_redis_unreachable_the_journal_line_names_the_file_in_use(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    state = tmp_path / "s"
    router = Router(["run", "--redis", url, "--state-dir", str(state)], tmp_path / "log")
    try:
        log = router.wait_log(r"INFO .*failure journal: ")
    finally:
        router.close()
    [line] = [row for row in log.splitlines() if "failure journal: " in row and " INFO " in row]
    assert f"failure journal: local file {state / 'failures.jsonl'} until " in line, line
    assert f"Redis stream eventrouter/failures at {url} can be written" in line, line


EXAMPLE_DIR = REPO / "examples" / "ns8-cluster"


def test_the_shipped_module_added_route_announces_once_per_cluster(tmp_path: Path) -> None:
    binary = find_server_binary()
    if binary is None:
        _missing("redis-server/valkey-server")
    topology = Topology(binary, size=3).start()
    routers: list[Router] = []
    try:
        for node in topology.nodes:  # as `make cluster` starts them
            args = ["run", "--redis", node.url, "--publish-redis", topology.master.url]
            args += ["--routes", str(EXAMPLE_DIR / "routes.d"), "--node", str(node.number)]
            args += ["--instance", f"node{node.number}", "--log-level", "DEBUG"]
            env = clean_env(EVENTROUTER_STATE_DIR=str(tmp_path / f"state{node.number}"))
            routers.append(Router(args, tmp_path / f"log{node.number}", env))
        for router in routers:  # started side by side, then waited for
            router.wait_log(r"subscribed to \d+ pattern", timeout=30)
        payload = '{"module": "traefik1", "node": 1}'
        published = run_here(
            "publish", "--redis", topology.master.url, "cluster/event/module-added", payload
        )
        assert published.returncode == 0, published.stderr
        # Each router has decided once its log names the event: emitted, or not run here.
        for router in routers:
            router.wait_log(
                r"\(caused by 'cluster/event/module-added'\)|route module-added: event .* not run"
            )
        emitted = sum(
            router.log.count("emitted 'cluster/event/module-domain-changed'") for router in routers
        )
    finally:
        for router in routers:
            router.close()
        topology.stop()
    assert emitted == 1
    assert "emitted 'cluster/event/module-domain-changed'" in routers[0].log  # the leader's


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_keeps_its_state_in_the_checkout() -> None:
    assignments, _ = _make_run_command()
    assert assignments["EVENTROUTER_STATE_DIR"] == str(REPO / ".state")
    assert ".state/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_is_found_by_publish_and_status_the_documented_way(short_tmp: Path) -> None:
    # The real `make run`, on a state folder of the test's own (the checkout's .state may be
    # in use by a router the developer started), with this interpreter's environment.
    venv = Path(sys.prefix)
    log = short_tmp / "log"
    with log.open("wb") as out:
        command = ["make", "-s", "-o", f"{venv}/bin/.installed", "run", f"VENV={venv}"]
        make = subprocess.Popen(
            [*command, f"RUN_STATE_DIR={short_tmp}"],
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the router: one group to stop
        )
    try:
        wait_for(lambda: "subscribed to" in log.read_text(), 30, "the router of `make run`")
        banner = log.read_text().splitlines()[0]
        # What `make run` prints first: the line to type in the other shell.
        assert f"export EVENTROUTER_STATE_DIR={short_tmp}" in banner, banner
        env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
        payload = '{"module": "traefik1", "node": 1}'
        published = run_here("publish", "cluster/event/module-added", payload, env=env)
        status = run_here("status", env=env)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(30)
    assert published.returncode == 0, published.stderr
    assert re.fullmatch(r"published cluster/event/module-added: [1-9]\d* receiver\(s\)\n", (
        published.stdout
    )), published.stdout  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert f"subscribe unix://{short_tmp}/redis.sock: connected, master" in status.stdout
    assert "route module-added emitted 'cluster/event/module-domain-changed'" in log.read_text()


def test_without_the_state_folder_the_cli_says_where_make_run_keeps_it(tmp_path: Path) -> None:
    # A router answering in ./.state (as `make run` leaves it) while the command looks in its
    # default folder: the error says how to point the command at it.
    from eventrouter.redis.embedded import EmbeddedServer

    binary = find_server_binary()
    if binary is None:
        _missing("redis-server/valkey-server")
    (tmp_path / ".state").mkdir(mode=0o700)
    server = EmbeddedServer(tmp_path / ".state", binary=binary)
    server.start()
    try:
        env = clean_env(EVENTROUTER_STATE_DIR=str(tmp_path / "default"))
        published = run_here("publish", "--raw", "a/event/b", "{}", env=env, cwd=tmp_path)
        status = run_here("status", env=env, cwd=tmp_path)
    finally:
        server.stop()
    for done in (published, status):
        assert done.returncode == 1
        assert "an embedded server answers at .state/redis.sock" in done.stderr, done.stderr
        assert "export EVENTROUTER_STATE_DIR=$PWD/.state" in done.stderr


EXAMPLE_README = EXAMPLE_DIR / "README.md"


def _section(title: str) -> str:
    """Return the text of a section of the example README, up to the next heading."""
    lines = EXAMPLE_README.read_text().splitlines()
    start = lines.index(title)
    fenced, end = False, len(lines)
    for number, line in enumerate(lines[start + 1 :], start + 1):
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            end = number
            break
    return "\n".join(lines[start:end]) + "\n"


def _publish_lines(text: str) -> list[list[str]]:
    """Return the arguments of every `eventrouter publish` line in the sh blocks of ``text``."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    rows = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(row)[1:] for row in rows if row.startswith(".venv/bin/eventrouter publish")]


class _MakeRun:
    """The router `make run` starts, on a state folder of the test's own."""

    def __init__(self, state: Path) -> None:
        assignments, args = _make_run_command()
        self.env = clean_env(**{**assignments, "EVENTROUTER_STATE_DIR": str(state)})
        self.url = f"unix://{state}/redis.sock"
        self.router = Router(args, state / "log", self.env)
        self.router.wait_log(r"subscribed to \d+ pattern", timeout=30)

    def publish(self, args: list[str]) -> None:
        """Do what `eventrouter publish ARGS` does, in process: check, then publish."""
        raw = args[1] == "--raw"
        channel, payload = args[2:] if raw else args[1:]
        if not raw:
            payloads.check_payload(channel, payload)
        with redis.Redis.from_url(self.url) as client:
            client.publish(channel, payload)

    def settled(self, published: int) -> None:
        """Wait until every event published, and those derived from them, has run its course."""

        def done() -> bool:
            query = control.Query("history", control.ALL, control.reply_channel(), limit=100)
            answers = asyncio.run(
                ask(self.url, control.QUERY_CHANNEL, query.to_bytes(), query.reply, wait=2.0,
                    first=True)
            )  # fmt: skip
            events = json.loads(answers[0])["events"] if answers else []
            derived = sum(len(event["derived"]) for event in events)
            busy = any(t["outcome"] == "queued" for e in events for t in e["routes"])
            return len(events) >= published + derived and not busy

        wait_for(done, 30, "the events to be handled")


def test_the_examples_to_try_show_no_error(short_tmp: Path) -> None:
    lines = _publish_lines(_section("## Try it"))
    assert len(lines) >= 8, lines
    run = _MakeRun(short_tmp)
    try:
        for args in lines:
            run.publish(args)
        run.settled(len(lines))
    finally:
        run.router.close()
    log = run.router.log
    assert " ERROR " not in log, log
    assert " WARNING " not in log, log


def test_the_failing_task_example_says_beforehand_what_it_shows(short_tmp: Path) -> None:
    text = _section("### A task that fails, then succeeds: the failure journal")
    [first, *_] = _publish_lines(text)
    announced = text[: text.index("```sh")]
    run = _MakeRun(short_tmp)
    try:
        run.publish(first)
        log = run.router.wait_log(r" ERROR ")
    finally:
        run.router.close()
    [error, *_] = [line for line in log.splitlines() if " ERROR " in line]
    reason = error.split("module/mail1: ", 1)[1].split(" (", 1)[0]
    assert f"`{reason}`" in announced, (reason, announced)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_each_slow_step_of_the_first_make_is_announced(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # none yet: what a fresh clone's first `make run` does
    shown = subprocess.run(
        ["make", "-n", "-B", f"VENV={venv}", f"{venv}/bin/.installed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.splitlines()
    slow = ("-m venv", "-m pip install", " sync ")
    for number, line in enumerate(shown):
        for what in (item for item in slow if item in line):
            before = line[: line.index(what)]
            said = 'echo "make: ' in before or shown[number - 1].startswith('echo "make: ')
            assert said, f"{what.strip()} runs unannounced:\n" + "\n".join(shown)
    assert sum(1 for line in shown if any(item in line for item in slow)) == 3, shown
