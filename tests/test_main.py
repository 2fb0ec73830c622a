"""Tests of the argument parser: its defaults are the daemon's ``Settings`` defaults."""

from __future__ import annotations

import pytest

from eventrouter.cli.main import build_parser
from eventrouter.model import Settings

#: Options of `run` that set a Settings field of the same name.
RUN_FIELDS = (
    "stop_timeout",
    "max_concurrency",
    "max_payload",
    "max_depth",
    "queue_limit",
    "max_pending",
    "journal_key",
    "journal_size",
    "instance",
    "control_channel",
    "watch",
)


def test_run_defaults_are_the_settings_defaults() -> None:
    args = build_parser().parse_args(["run"])
    defaults = Settings()
    assert {name: getattr(args, name) for name in RUN_FIELDS} == {
        name: getattr(defaults, name) for name in RUN_FIELDS
    }


@pytest.mark.parametrize(
    ("argv", "fields"),
    [
        (["explain", "x/event/y"], ("max_depth",)),
        (["test"], ("max_depth",)),
        (["failures"], ("journal_key",)),
        (["retry", "1-0"], ("journal_key", "control_channel")),
    ],
)
def test_other_commands_share_the_settings_defaults(argv: list[str], fields: tuple[str]) -> None:
    args = build_parser().parse_args(argv)
    for name in fields:
        assert getattr(args, name) == getattr(Settings(), name), name


def test_help_shows_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = Settings()
    assert f"(default: {defaults.max_payload})" in text
    assert f"(default: {defaults.control_channel})" in text
    assert f"(default: {defaults.max_pending})" in text


def test_each_run_option_sets_its_settings_field() -> None:
    from pathlib import Path

    from eventrouter.cli.main import RUN_OPTIONS
    from eventrouter.cli.options import OPTIONS, settings_from

    given = {
        "--step-timeout": ("7s", 7.0),
        "--stop-timeout": ("8s", 8.0),
        "--ping-interval": ("9s", 9.0),
        "--ping-timeout": ("3s", 3.0),
        "--template-timeout": ("2s", 2.0),
        "--role-interval": ("4s", 4.0),
        "--state-dir": ("/tmp/x", Path("/tmp/x")),
        "--journal-key": ("k", "k"),
        "--instance": ("node9", "node9"),
        "--control-channel": ("c", "c"),
        "--node": ("3", "3"),
        "--agent": ("module/a1", "module/a1"),
    }
    argv = ["run"]
    for number, flag in enumerate(RUN_OPTIONS, start=11):
        option = OPTIONS[flag]
        if option.field is None:
            continue
        if option.action == "store_true":
            argv.append(flag)
            given[flag] = ("", True)
        else:
            text, _ = given.setdefault(flag, (str(number), number))
            argv.append(f"{flag}={text}")
    settings = settings_from(build_parser().parse_args(argv), redis_url="redis://h")
    found = {flag: getattr(settings, OPTIONS[flag].field or "") for flag in given}
    assert found == {flag: value for flag, (_, value) in given.items()}
    assert settings.redis_url == "redis://h"
    assert settings_from(build_parser().parse_args(["run"])) == Settings()
