"""A SIGHUP while a route file is being written in place must not truncate the route table."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

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

    assert f"{path}:1: error: file kept changing while it was read" in log
    assert f"reload failed with 1 error(s); keeping the {ROUTES} routes" in log
    redis_cli("PUBLISH", "x/event/e2", "{}")
    wait_for(lambda: lines(Path(f"{out}2")), what="the old route r2")
    assert lines(Path(f"{out}2")) == ["v1"]
    assert router.stop() == 0
