"""Tests of the failure journal (Redis stream, local file fallback) and its CLI commands."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from eventrouter.cli.main import build_parser
from eventrouter.redis import stream_journal
from eventrouter.redis.binaries import find_server_binary
from eventrouter.redis.embedded import EmbeddedServer
from eventrouter.redis.stream_journal import StreamJournal, open_journal
from eventrouter.runtime import journal
from eventrouter.runtime.identity import instance_name
from eventrouter.runtime.journal import (
    MAX_LINE,
    TAIL_LINES,
    Failure,
    FileJournal,
    encode_payload,
    parse_retry_message,
    retry_message,
)
from tests.conftest import free_port
from tests.routerproc import clean_env, run_here, wait_for

KEY = "eventrouter/failures"
CONTROL = "eventrouter/control/retry"


def failure(
    route: str = "alpha",
    channel: str = "cluster/event/module-added",
    raw: bytes = b'{"module": "mail1"}',
    **changes: object,
) -> Failure:
    """Return a failure of ``route`` on ``channel`` with ``raw`` as payload, not yet recorded."""
    text, b64 = encode_payload(raw)
    now = time.time()
    base = Failure(
        id="",
        time=now,
        started=now - 1.5,
        instance="host1",
        route=route,
        route_file="/etc/routes.d/r.yml",
        route_line=3,
        action="run /etc/routes.d/h",
        action_index=1,
        step="20fail",
        status="exit status 3",
        reason="route alpha: handler /etc/routes.d/h: step 20fail: exit status 3",
        channel=channel,
        payload=text,
        payload_b64=b64,
        tail=("first line", "last line"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def record_all(book: journal.Journal, *items: Failure) -> list[str]:
    """Record ``items`` in order; return their ids."""
    return [await book.record(item) for item in items]


def xlen(url: str, key: str = KEY) -> int:
    """Return the length of the stream ``key`` as Redis itself reports it."""
    with redis.Redis.from_url(url) as client:
        return int(client.xlen(key))


# --- Redis stream -------------------------------------------------------------------------


async def test_stream_records_lists_newest_first_and_gets(redis_url: str, short_tmp: Path) -> None:
    book = await open_journal(redis_url, KEY, 100, short_tmp)
    assert isinstance(book, StreamJournal)
    assert book.where == f"Redis stream {KEY} at {redis_url}"
    items = [failure(route=name) for name in ("alpha", "beta", "gamma")]
    ids = await record_all(book, *items)
    await book.close()
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert xlen(redis_url) == 3  # the write probe left no entry behind

    reopened = await open_journal(redis_url, KEY, 100, short_tmp)  # as after a restart
    try:
        listed = await reopened.list()
        assert [item.route for item in listed] == ["gamma", "beta", "alpha"]
        assert [item.id for item in listed] == ids[::-1]
        assert listed[-1] == dataclasses.replace(items[0], id=ids[0])
        assert await reopened.get(ids[1]) == dataclasses.replace(items[1], id=ids[1])
        assert await reopened.get("1-1") is None
        assert await reopened.get("not-an-id") is None
        assert [item.route for item in await reopened.list(limit=2)] == ["gamma", "beta"]
    finally:
        await reopened.close()
    assert not (short_tmp / journal.FILE_NAME).exists()


async def test_stream_filters_by_route_and_event(redis_url: str, short_tmp: Path) -> None:
    book = await open_journal(redis_url, KEY, 1000, short_tmp)
    try:
        await record_all(
            book,
            failure("alpha", "cluster/event/module-added"),
            failure("beta", "node/1/event/fqdn-changed"),
            failure("alpha-2", "module/traefik1/event/certificate-changed"),
        )

        async def routes(**filters: str) -> list[str]:
            return [item.route for item in await book.list(**filters)]  # type: ignore[arg-type]

        assert await routes(route="alpha") == ["alpha"]
        assert await routes(route="alpha*") == ["alpha-2", "alpha"]
        assert await routes(event="fqdn-changed") == ["beta"]
        assert await routes(event="node/*/event/*") == ["beta"]
        assert await routes(event="*-changed") == ["alpha-2", "beta"]
        assert await routes(event="module-added", route="beta") == []
        assert await routes(event="nothing") == []
    finally:
        await book.close()


async def test_stream_filter_pages_back_to_old_entries(redis_url: str, short_tmp: Path) -> None:
    book = await open_journal(redis_url, KEY, 1000, short_tmp)
    try:
        old = await book.record(failure("old"))
        new = await record_all(
            book, *(failure("new") for _ in range(2 * stream_journal._PAGE + 10))
        )
        found = await book.list(route="old")
        assert [item.id for item in found] == [old]
        newest = await book.list(limit=stream_journal._PAGE + 5)
        assert [item.id for item in newest] == new[: -stream_journal._PAGE - 6 : -1]  # no repeats
    finally:
        await book.close()


async def test_stream_is_capped_exactly(redis_url: str, short_tmp: Path) -> None:
    # Exact trimming: with `MAXLEN ~` Redis only drops whole nodes (100 entries by default),
    # so a cap of 5 would not trim at all; failures are rare, exact trimming costs nothing.
    book = await open_journal(redis_url, KEY, 5, short_tmp)
    try:
        ids = await record_all(book, *(failure(f"r{number}") for number in range(20)))
        assert xlen(redis_url) == 5
        assert [item.id for item in await book.list()] == ids[:-6:-1]
        assert await book.get(ids[0]) is None
    finally:
        await book.close()


async def test_binary_payload_and_long_tail_round_trip(redis_url: str, short_tmp: Path) -> None:
    raw = b"\x00\xff binary \xc3"
    tail = tuple(f"line {number} " + "x" * 2000 for number in range(TAIL_LINES + 5))
    book = await open_journal(redis_url, KEY, 100, short_tmp)
    try:
        binary_id, text_id = await record_all(
            book, failure(raw=raw, tail=tail), failure(raw="é".encode())
        )
        binary, text = await book.get(binary_id), await book.get(text_id)
    finally:
        await book.close()
    assert binary is not None and text is not None
    assert binary.raw() == raw and binary.payload_b64 is not None
    assert text.raw() == "é".encode() and text.payload == "é" and text.payload_b64 is None
    assert len(binary.tail) == TAIL_LINES
    assert binary.tail[-1].startswith(f"line {TAIL_LINES + 4} ")
    assert all(len(line) == MAX_LINE for line in binary.tail)


async def test_record_never_raises_when_redis_goes_away(
    redis_server: EmbeddedServer, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = await open_journal(redis_server.url, KEY, 100, short_tmp)
    try:
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="eventrouter"):
            assert await book.record(failure("kept-route"))  # in the local file meanwhile
        assert "until it can be written" in caplog.text
        assert [item.route for item in await FileJournal(short_tmp / journal.FILE_NAME, 9).list()]
        with pytest.raises(journal.JournalError, match="cannot read Redis stream"):
            await book.list()
    finally:
        await book.close()


async def test_journal_follows_a_redis_that_comes_up_late(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    state = short_tmp / "state"
    book = await open_journal(url, KEY, 100, state)
    binary = find_server_binary()
    assert binary is not None
    late = EmbeddedServer(short_tmp / "late", binary=binary, port=port)
    try:
        early = await book.record(failure("early"))
        assert early and (state / journal.FILE_NAME).is_file()
        late.start()
        with caplog.at_level(logging.WARNING, logger="eventrouter"):
            later = await book.record(failure("later"))
        assert "recording in Redis stream" in caplog.text
        assert xlen(url) == 1  # from now on in the stream
        assert [item.route for item in await FileJournal(state / journal.FILE_NAME, 9).list()] == [
            "early"
        ]
        listed = await book.list()
        assert [(item.id, item.route) for item in listed] == [(later, "later"), (early, "early")]
        found = await book.get(early)
        assert found is not None and found.route == "early"
        assert [item.route for item in await book.list(route="ear*")] == ["early"]
        assert [item.route for item in await book.list(limit=1)] == ["later"]
    finally:
        await book.close()
        late.stop()


# --- Falling back to the local file --------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.endswith("journal") and record.levelno >= logging.WARNING
    ]


async def test_user_without_write_permission_falls_back_to_the_file_once(
    redis_server: EmbeddedServer, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.acl_setuser(
            "reader",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@read", "+@pubsub", "-@write"],
        )
    url = f"redis://reader:pw@127.0.0.1:{redis_server.port}"
    state = short_tmp / "state"
    with caplog.at_level(logging.INFO, logger="eventrouter"):
        book = await open_journal(url, KEY, 100, state)
        first = await book.record(failure())
        await book.record(failure("beta"))
        await book.close()
    assert isinstance(book, FileJournal)
    assert book.where == f"local file {state / journal.FILE_NAME}"
    (warning,) = _warnings(caplog)
    assert "reader:***@" in warning and "pw" not in warning.replace("reader:***", "")
    assert "permission" in warning.lower() and str(state / journal.FILE_NAME) in warning
    assert first and (state / journal.FILE_NAME).is_file()
    assert xlen(redis_server.url) == 0


async def test_read_only_replica_falls_back_to_the_file(
    redis_server: EmbeddedServer, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary = find_server_binary()
    assert binary is not None
    replica = EmbeddedServer(short_tmp / "replica", binary=binary, port=free_port())
    replica.start()
    try:
        with redis.Redis.from_url(replica.url) as client:
            client.replicaof("127.0.0.1", redis_server.port)
        with caplog.at_level(logging.WARNING, logger="eventrouter"):
            book = await open_journal(replica.url, KEY, 100, short_tmp / "state")
        assert isinstance(book, FileJournal)
        (warning,) = _warnings(caplog)
        assert "read only" in warning.lower() or "readonly" in warning.lower()
    finally:
        replica.stop()


async def test_unreachable_redis_records_in_the_file_meanwhile(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="eventrouter"):
        book = await open_journal(url, KEY, 100, short_tmp)
        recorded = await book.record(failure())
    (warning,) = _warnings(caplog)
    assert url in warning and "Connection" in warning and "until it can be written" in warning
    assert recorded and (short_tmp / journal.FILE_NAME).is_file()
    await book.close()


async def test_no_redis_means_the_file_without_a_warning(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eventrouter"):
        book = await open_journal(None, KEY, 100, short_tmp)
    assert isinstance(book, FileJournal)
    assert await book.list() == []
    assert await book.get("1-0") is None
    assert _warnings(caplog) == []
    assert not (short_tmp / journal.FILE_NAME).exists()  # reading creates nothing


# --- The local file ------------------------------------------------------------------------


async def test_file_journal_is_bounded(short_tmp: Path) -> None:
    path = short_tmp / journal.FILE_NAME
    book = FileJournal(path, 3)
    ids = await record_all(book, *(failure(f"r{number}") for number in range(6)))
    assert len(path.read_text().splitlines()) == 6
    ids += await record_all(book, failure("r6"))  # past 2 * size: keep the newest 3
    assert len(path.read_text().splitlines()) == 3
    ids += await record_all(book, *(failure(f"r{number}") for number in range(7, 10)))
    assert len(path.read_text().splitlines()) == 6
    assert [item.id for item in await book.list()] == ids[:3:-1]
    assert [item.route for item in await book.list(limit=2)] == ["r9", "r8"]
    assert await book.get(ids[0]) is None
    assert not path.with_name(path.name + ".tmp").exists()


async def test_file_journal_survives_a_restart(short_tmp: Path) -> None:
    path = short_tmp / "state" / journal.FILE_NAME
    before = FileJournal(path, 100)
    ids = await record_all(before, failure("alpha"), failure("beta", raw=b"\xff"))
    after = FileJournal(path, 100)  # a new router process
    listed = await after.list()
    assert [item.id for item in listed] == ids[::-1]
    assert listed[0].raw() == b"\xff"
    assert await after.get(ids[0]) == dataclasses.replace(
        failure("alpha"), id=ids[0], time=listed[1].time, started=listed[1].started
    )
    assert [item.route for item in await after.list(route="beta")] == ["beta"]


async def test_file_ids_stay_monotonic_and_unique_across_restarts(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_tmp / journal.FILE_NAME
    clock = SimpleNamespace(time=lambda: 1_700_000_000.0)
    monkeypatch.setattr(journal, "time", clock)
    first = await record_all(FileJournal(path, 100), failure(), failure())
    assert first == ["1700000000000-0", "1700000000000-1"]
    clock.time = lambda: 1_699_999_000.0  # the clock went back meanwhile
    second = await record_all(FileJournal(path, 100), failure())
    assert second == ["1700000000000-2"]
    clock.time = lambda: 1_700_000_000.5
    third = await record_all(FileJournal(path, 100), failure())
    assert third == ["1700000000500-0"]


async def test_file_journal_skips_a_line_cut_short(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_tmp / journal.FILE_NAME
    (kept,) = await record_all(FileJournal(path, 100), failure())
    with path.open("a") as handle:
        handle.write('{"id": "9999999999999-0", "route": "cut')  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="eventrouter"):
        assert [item.id for item in await FileJournal(path, 100).list()] == [kept]
    assert "skipped 1 unreadable line" in caplog.text


async def test_file_journal_record_logs_instead_of_raising(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = short_tmp / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR, logger="eventrouter"):
        assert await FileJournal(blocker / journal.FILE_NAME, 10).record(failure("r")) == ""
    assert "could not record" in caplog.text and "route r on cluster/event/" in caplog.text


# --- Records and messages ------------------------------------------------------------------


def test_failure_json_round_trip_and_rejects_bad_records() -> None:
    item = failure(raw=b"\x00\xff", id="1-2", step=None, attempts=3)
    assert Failure.from_json(json.loads(json.dumps(item.to_json()))) == item
    without_attempts = {k: v for k, v in item.to_json().items() if k != "attempts"}
    assert Failure.from_json(without_attempts).attempts == 1
    for broken in ({"route": 3}, {"time": "yesterday"}, {"payload_b64": "***"}, {"tail": "x"}):
        with pytest.raises(ValueError):
            Failure.from_json({**item.to_json(), **broken})
    with pytest.raises(ValueError, match="channel"):
        Failure.from_json({k: v for k, v in item.to_json().items() if k != "channel"})


def test_retry_message_round_trip() -> None:
    item = failure(id="1700000000000-4", instance="node1")
    assert json.loads(retry_message(item)) == {"id": "1700000000000-4", "instance": "node1"}
    assert parse_retry_message(retry_message(item)) == ("1700000000000-4", "node1")
    for bad in (b"", b"\xff", b"[]", b'{"id": "x-1", "instance": "a"}', b'{"id": "1-1"}'):
        assert parse_retry_message(bad) is None, bad


def test_run_accepts_the_journal_options() -> None:
    args = build_parser().parse_args(
        ["run", "--journal-key", "k", "--journal-size", "7", "--instance", "node1"]
    )
    assert (args.journal_key, args.journal_size, args.instance) == ("k", 7, "node1")
    defaults = build_parser().parse_args(["run"])
    assert (defaults.journal_key, defaults.journal_size, defaults.instance) == (KEY, 10_000, "")
    assert instance_name("") and instance_name("node2") == "node2"


# --- The CLI -------------------------------------------------------------------------------


@pytest.fixture
def state(short_tmp: Path) -> Path:
    """Return a state folder apart from the test server's socket (which is in short_tmp)."""
    return short_tmp / "state"


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `eventrouter` CLI with no Redis in its environment."""
    return run_here(*args, env=clean_env(EVENTROUTER_STATE_DIR=str(state)))


def seed(url: str | None, state: Path, *items: Failure, key: str = KEY) -> list[str]:
    """Record ``items`` in the journal the router would use; return their ids."""

    async def run() -> list[str]:
        book = await open_journal(url, key, 100, state)
        try:
            return await record_all(book, *items)
        finally:
            await book.close()

    return asyncio.run(run())


def test_cli_failures_on_empty_journals(redis_url: str, state: Path) -> None:
    local = cli(state, "failures")
    assert local.returncode == 0, local.stderr
    assert local.stdout.startswith("no failures recorded") and "local file" in local.stdout
    assert json.loads(cli(state, "failures", "--json").stdout) == []
    stream = cli(state, "failures", "--redis", redis_url)
    assert stream.returncode == 0, stream.stderr
    assert stream.stdout.startswith("no failures recorded") and "Redis stream" in stream.stdout


def test_cli_failures_lists_newest_first_with_filters(redis_url: str, state: Path) -> None:
    old, new = seed(
        redis_url,
        state,
        failure("alpha", "cluster/event/module-added"),
        failure("beta", "node/1/event/fqdn-changed", tail=("boom: disk full",)),
    )
    shown = cli(state, "failures", "--redis", redis_url)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.index(new) < out.index(old)
    header = next(line for line in out.splitlines() if line.startswith(new))
    for part in ("host1", "beta", "node/1/event/fqdn-changed", "exit status 3", "step 20fail"):
        assert part in header
    assert "\n    boom: disk full\n" in out and "payload: {" in out

    listed = json.loads(cli(state, "failures", "--redis", redis_url, "--json").stdout)
    assert [item["id"] for item in listed] == [new, old]
    assert listed[0]["tail"] == ["boom: disk full"]

    def ids(*flags: str) -> list[str]:
        result = cli(state, "failures", "--redis", redis_url, "--json", *flags)
        assert result.returncode == 0, result.stderr
        return [item["id"] for item in json.loads(result.stdout)]

    assert ids("--route", "alpha") == [old]
    assert ids("--event", "fqdn-changed") == [new]
    assert ids("--event", "cluster/event/*") == [old]
    assert ids("--limit", "1") == [new]
    assert ids("--journal-key", "other/key") == []
    filtered = cli(state, "failures", "--redis", redis_url, "--route", "nope")
    assert filtered.returncode == 0 and filtered.stdout.startswith("no failures match")


def test_cli_failures_reads_the_local_file(state: Path) -> None:
    (recorded,) = seed(None, state, failure("gamma"))
    shown = cli(state, "failures")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(recorded) and "gamma" in shown.stdout


def test_cli_retry_of_an_unknown_id_fails(redis_url: str, state: Path) -> None:
    seed(redis_url, state, failure())
    result = cli(state, "retry", "--redis", redis_url, "1-0")
    assert result.returncode == 1
    assert "no failure '1-0'" in result.stderr and "Redis stream" in result.stderr


def test_cli_retry_with_no_router_listening_fails(redis_url: str, state: Path) -> None:
    (recorded,) = seed(redis_url, state, failure())
    result = cli(state, "retry", "--redis", redis_url, recorded)
    assert result.returncode == 1
    assert f"no router is listening on {CONTROL}; is `eventrouter run` running?" in result.stderr
    assert "route alpha on cluster/event/module-added" in result.stderr
    assert result.stdout == ""  # nothing was retried


def test_cli_retry_without_any_redis_fails(state: Path) -> None:
    (recorded,) = seed(None, state, failure())
    result = cli(state, "retry", recorded)
    assert result.returncode == 1 and "no router is listening" in result.stderr


def test_cli_retry_asks_the_routers_on_the_control_channel(redis_url: str, state: Path) -> None:
    (recorded,) = seed(redis_url, state, failure(instance="node7"))
    with redis.Redis.from_url(redis_url) as client, client.pubsub() as pubsub:
        pubsub.subscribe("ops/retry")
        wait_for(lambda: pubsub.get_message(timeout=0.1), what="the subscription")
        result = cli(
            state, "retry", "--redis", redis_url, "--control-channel", "ops/retry", recorded
        )
        assert result.returncode == 0, result.stderr
        assert "1 receiver(s)" in result.stdout
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), what="the retry message")
    assert message["channel"] == b"ops/retry"
    assert json.loads(message["data"]) == {"id": recorded, "instance": "node7"}
    assert parse_retry_message(message["data"]) == (recorded, "node7")


def test_cli_failures_merges_the_stream_and_the_local_file(redis_url: str, state: Path) -> None:
    (old,) = seed(None, state, failure("while-redis-was-down"))
    time.sleep(0.002)  # ids are milliseconds: keep the two apart
    (new,) = seed(redis_url, state, failure("in-the-stream"))
    listed = json.loads(cli(state, "failures", "--redis", redis_url, "--json").stdout)
    assert [(item["id"], item["route"]) for item in listed] == [
        (new, "in-the-stream"),
        (old, "while-redis-was-down"),
    ]
    retried = cli(state, "retry", "--redis", redis_url, old)
    # Found in the local file (else "no failure ..."); no router listens to be asked.
    assert retried.returncode == 1
    assert "no router is listening" in retried.stderr, retried.stderr


def test_cli_failures_from_an_unreachable_redis_is_an_error(state: Path) -> None:
    seed(None, state, failure("only-in-the-file"))
    url = f"redis://127.0.0.1:{free_port()}"
    for command in (("failures",), ("retry", "1-0")):
        result = cli(state, *command, "--redis", url)
        assert result.returncode == 1, result
        assert f"cannot read Redis stream {KEY} at {url}" in result.stderr
        assert "only-in-the-file" not in result.stdout
