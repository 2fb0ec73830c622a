"""Credentials: passwords never reach the log or an error message, and can be given without
the command line (password file, systemd credential) for subscribing and publishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrouter.redis.bus import redact
from eventrouter.redis.connections import subscribe_url, with_password
from tests.conftest import RedisCli, free_port
from tests.routerproc import (
    Router,
    clean_env,
    run_here,
    wait_for,
    write_routes,
    write_step,
)

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@h:1/0", "redis://***@h:1/0"),
        (f"redis://app:{SECRET}@h:1", "redis://app:***@h:1"),
        (f"redis://h:1/0?password={SECRET}&db=1", "redis://h:1/0?password=***&db=1"),
        (f"unix:///run/r.sock?db=0&password={SECRET}", "unix:///run/r.sock?db=0&password=***"),
        ("redis://h:1", "redis://h:1"),
    ],
)
def test_redact_hides_userinfo_and_query_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_with_password_keeps_a_password_already_given() -> None:
    assert with_password("redis://h:1", "p w") == "redis://:p%20w@h:1"
    assert with_password("redis://u@h:1", "p") == "redis://u:p@h:1"
    assert with_password("redis://:x@h:1", "p") == "redis://:x@h:1"
    assert with_password("unix:///r.sock", "p", "u") == "unix:///r.sock?username=u&password=p"


def test_credential_sources_in_order(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("from-credential\n")
    (tmp_path / "file").write_text("from-file\n")
    env = {"REDIS_ADDRESS": "h:1", "REDIS_PASSWORD": "from-env", "REDIS_USER": "u"}

    assert subscribe_url(None, env) == "redis://u:from-env@h:1"
    env["CREDENTIALS_DIRECTORY"] = str(tmp_path)
    assert subscribe_url(None, env) == "redis://u:from-credential@h:1"
    env["REDIS_PASSWORD_FILE"] = str(tmp_path / "file")
    assert subscribe_url(None, env) == "redis://u:from-file@h:1"
    assert subscribe_url("redis://h:2", {}, str(tmp_path / "file")) == "redis://:from-file@h:2"


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_wrong_password_and_refused_connection_never_show_it(
    form: str, redis_url: str, redis_cli: RedisCli
) -> None:
    assert redis_cli("CONFIG", "SET", "requirepass", "right-one").returncode == 0
    port = redis_url.rsplit(":", 1)[1]
    for target in (port, str(free_port())):  # a wrong password, then nothing listening
        if form == "userinfo":
            url = f"redis://:{SECRET}@127.0.0.1:{target}"
        else:
            url = f"redis://127.0.0.1:{target}?password={SECRET}"

        published = run_here("publish", "--redis", url, "cluster/event/x", "{}")

        assert published.returncode == 1
        assert "cannot publish" in published.stderr
        assert SECRET not in published.stderr + published.stdout


def test_router_log_never_shows_the_password(tmp_path: Path) -> None:
    url = f"redis://app:{SECRET}@127.0.0.1:{free_port()}?password={SECRET}"
    router = Router(["run", "--redis", url], tmp_path / "log")
    try:
        router.wait_log(r"Redis at .*retrying", timeout=10)
    finally:
        router.kill()
    assert SECRET not in router.log
    assert "app:***@" in router.log


def setup_password_route(tmp_path: Path, out: Path) -> Path:
    """Write a route running a step that records the payload; return the routes folder."""
    write_step(tmp_path / "h" / "10", f"cat > {out}")
    return write_routes(
        tmp_path / "routes.d",
        "r.yml",
        "routes:\n  - name: got\n    on: cluster/event/pw\n    do: [{run: ../h}]\n",
    ).parent


@pytest.mark.parametrize("source", ["flag", "env file", "systemd credential"])
def test_password_file_against_a_server_requiring_it(
    source: str, tmp_path: Path, redis_url: str, redis_cli: RedisCli, short_tmp: Path
) -> None:
    assert redis_cli("CONFIG", "SET", "requirepass", SECRET).returncode == 0
    secret = tmp_path / "creds" / "redis-password"
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    env = clean_env(REDIS_ADDRESS=redis_url.removeprefix("redis://"))
    flags: list[str] = []
    if source == "flag":
        flags = ["--redis-password-file", str(secret)]
    elif source == "env file":
        env["REDIS_PASSWORD_FILE"] = str(secret)
    else:
        env["CREDENTIALS_DIRECTORY"] = str(secret.parent)
    out = tmp_path / "out"
    routes = setup_password_route(tmp_path, out)
    router = Router(
        ["run", "--routes", str(routes), "--state-dir", str(short_tmp), *flags],
        tmp_path / "log",
        env,
    )
    try:
        router.ready()
        published = run_here("publish", *flags, "cluster/event/pw", '{"a": 1}', env=env)
        assert published.returncode == 0, published.stderr
        wait_for(lambda: out.exists() and out.read_text() == '{"a": 1}', 5, "the step")
        assert router.stop() == 0
    finally:
        router.kill()
    assert SECRET not in router.log
    assert SECRET not in " ".join(map(str, router.proc.args))  # not on the command line
