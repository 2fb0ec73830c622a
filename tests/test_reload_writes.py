"""A reload never reads a route file being written in place: no route lost, no event lost."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.conftest import RedisCli
from tests.routerproc import Router, lines, wait_for, write_step

ROUTES = 3


def _route_text(version: str) -> str:
    """Return a route file with a long leading comment and ROUTES routes tagged ``version``."""
    comment = "".join(
        f"# {number:03d}: routes that react to x/event/eN by running ../h/N; see below\n"
        for number in range(100)
    )
    routes = "".join(
        f"  - name: r{n}\n    on: x/event/e{n}\n"
        f"    do: [{{run: ../h/{n}, env: {{WHO: {version}}}}}]\n"
        for n in range(1, ROUTES + 1)
    )
    return f"{comment}routes:\n{routes}"


def _start(tmp_path: Path, router_factory: Callable[..., Router]) -> tuple[Path, Path, Router]:
    """Start a router on one file of ROUTES routes (version v1); return out, file, router."""
    out = tmp_path / "out"
    for n in range(1, ROUTES + 1):
        write_step(tmp_path / "h" / str(n) / "10", f'echo "$WHO" >> {out}{n}')
    routes = tmp_path / "routes.d"
    routes.mkdir()
    path = routes / "r.yml"
    path.write_text(_route_text("v1"))
    return out, path, router_factory("--routes", str(routes))


def test_sighup_during_an_in_place_write_keeps_every_route(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    out, path, router = _start(tmp_path, router_factory)
    new = _route_text("v2").encode()
    cut = len(new) // 3  # inside the leading comment: alone, it is an empty route file
    assert b"routes:" not in new[:cut]

    with path.open("r+b") as handle:  # in place, as an editor or a script does: same inode
        handle.truncate(0)
        handle.write(new[:cut])
        handle.flush()
        router.signal(signal.SIGHUP)
        router.wait_log("SIGHUP: reloading")
        time.sleep(0.05)  # the writer pauses, the reload reads
        handle.write(new[cut:])

    log = router.wait_log(r"reloaded: \d+ routes|reload failed")
    assert f"reloaded: {ROUTES} routes (+0 -0 ~{ROUTES})" in log
    for n in range(1, ROUTES + 1):
        redis_cli("PUBLISH", f"x/event/e{n}", "{}")
    for n in range(1, ROUTES + 1):
        wait_for(lambda n=n: lines(Path(f"{out}{n}")), what=f"route r{n}'s handler")  # type: ignore[misc]
        assert lines(Path(f"{out}{n}")) == ["v2"]
    assert router.stop() == 0


def test_a_file_that_keeps_changing_keeps_the_old_routes(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    out, path, router = _start(tmp_path, router_factory)
    stop = threading.Event()

    def keep_writing() -> None:
        with path.open("ab") as handle:
            while not stop.wait(0.03):
                handle.write(b"# still writing\n")
                handle.flush()

    writer = threading.Thread(target=keep_writing)
    size = path.stat().st_size
    writer.start()
    try:
        wait_for(lambda: path.stat().st_size > size, what="the writer under way")
        router.signal(signal.SIGHUP)
        log = router.wait_log(r"reloaded: \d+ routes|reload failed", timeout=15)
    finally:
        stop.set()
        writer.join()

    assert f"{path}:1: error: file still open for writing after 2s" in log
    assert f"reload failed with 1 error(s); keeping the {ROUTES} routes" in log
    redis_cli("PUBLISH", "x/event/e2", "{}")
    wait_for(lambda: lines(Path(f"{out}2")), what="the old route r2")
    assert lines(Path(f"{out}2")) == ["v1"]
    assert router.stop() == 0


EVENTS = 300
#: Rounds of rewrites (each file once) while events flow, at least.
ROUNDS = 8
#: How long a reload of the old rule waited for a file to be quiet before reading it.
QUIET = 0.25
NAMES = ("a", "b")
DONE = re.compile(r"reloaded: \d+ routes|reload failed")


def _comment_then_route(name: str) -> str:
    """Return a route file whose first third is comments only: cut there, it has no routes."""
    comment = "".join(
        f"# {number:03d}: route {name} runs ../h/{name} on x/event/{name}-changed\n"
        for number in range(60)
    )
    route = f"  - name: r{name}\n    on: x/event/{name}-changed\n    do: [{{run: ../h/{name}}}]\n"
    return f"{comment}routes:\n{route}"


def _rewrite(path: Path, text: bytes, router: Router) -> float:
    """Rewrite ``path`` in place as a script does: truncate, part, the rest tens of ms later.

    A SIGHUP goes out as soon as the file is cut, and another once part of it is written.
    Return when the last write was done (``time.monotonic``).
    """
    with path.open("wb") as handle:  # a truncating open: same inode, size 0 at once
        router.signal(signal.SIGHUP)
        time.sleep(0.01)  # `make-routes > file`: the shell truncates, the program starts
        handle.write(text[: len(text) // 3])
        handle.flush()
        router.signal(signal.SIGHUP)
        time.sleep(0.03)
        handle.write(text[len(text) // 3 :])
        return time.monotonic()


class _Bursts(threading.Thread):
    """Send three SIGHUPs each time a reload completes, until stopped."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.router = router
        self.stop = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.stop.wait(0.002):
            done = len(DONE.findall(self.router.log))
            if done > seen:
                seen = done
                for _ in range(3):
                    self.router.signal(signal.SIGHUP)


class _Rewrites(threading.Thread):
    """Rewrite the route files in place, round after round, until stopped."""

    def __init__(self, folder: Path, texts: dict[str, bytes], router: Router) -> None:
        super().__init__()
        self.folder, self.texts, self.router = folder, texts, router
        self.stop = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        order = NAMES
        while not self.stop.is_set():
            order = order[::-1]  # the file written last opens the next round
            for name in order:
                last = _rewrite(self.folder / f"{name}.yml", self.texts[name], self.router)
            self.rounds += 1
            # A reload that met that file waits for it to be quiet, then reads it again: cut
            # it about then, 0 to 5 ms later in turn: the reload wakes up a little late.
            time.sleep(max(0.0, last + QUIET + 0.001 * (self.rounds % 6) - time.monotonic()))


def _end_marks(client: redis.Redis, out: dict[str, Path]) -> None:
    """Publish an end mark on each route until it has run: a queued route runs its events in
    order, so every event sent before it has run by then, or never will."""
    for name in NAMES:

        def ended(name: str = name) -> bool:
            if "end" in lines(out[name]):
                return True
            client.publish(f"x/event/{name}-changed", "end")
            time.sleep(0.1)
            return False

        wait_for(ended, timeout=30, what=f"the end mark on route r{name}")


def test_in_place_rewrites_amid_signal_bursts_lose_no_event(
    tmp_path: Path, router_factory: Callable[..., Router], redis_url: str
) -> None:
    """Two route files rewritten in place again and again while events flow through their
    queued routes, SIGHUPs as each is cut and once it is partly written, three more each time
    a reload completes: every event is handled, by a route that never went missing."""
    out = {name: tmp_path / f"out-{name}" for name in NAMES}
    for name in NAMES:
        write_step(tmp_path / "h" / name / "10", f"{{ cat; echo; }} >> {out[name]}")
    folder = tmp_path / "routes.d"
    folder.mkdir()
    texts = {name: _comment_then_route(name).encode() for name in NAMES}
    assert all(b"routes:" not in text[: len(text) // 3] for text in texts.values())
    for name in NAMES:
        (folder / f"{name}.yml").write_bytes(texts[name])
    router = router_factory("--routes", str(folder))
    client = redis.Redis.from_url(redis_url)
    sent: dict[str, set[str]] = {name: set() for name in NAMES}
    bursts, writer = _Bursts(router), _Rewrites(folder, texts, router)
    bursts.start()
    writer.start()
    try:
        number = 0
        # EVENTS at least, and for as long as the writer needs for ROUNDS rounds.
        while number < EVENTS or (writer.rounds < ROUNDS and writer.is_alive()):
            name = NAMES[number % 2]
            client.publish(f"x/event/{name}-changed", str(number))
            sent[name].add(str(number))
            number += 1
            time.sleep(0.004)
    finally:
        for thread in (writer, bursts):
            thread.stop.set()
            thread.join()

    router.signal(signal.SIGHUP)  # the files are whole now: this reload loads them
    _end_marks(client, out)
    client.close()
    assert writer.rounds >= ROUNDS, "the writer stopped early"
    lost = {name: sorted(sent[name] - set(lines(out[name])), key=int) for name in NAMES}
    reloads = re.findall(r"reloaded: .*|reload failed.*|warning: file is empty.*", router.log)
    assert not any(lost.values()), f"events lost: {lost}; reloads: {sorted(set(reloads))}"
    assert router.stop() == 0
