"""The options of more than one command, and every option of `run`: each declared once.

``OPTIONS`` is the one table: a command takes an option by its flag (``add``), and the
options of `run` that set a ``Settings`` field take their default from that field, so each
default is written once, in ``model.Settings``; ``settings_from`` builds the daemon's
settings from the parsed arguments with the same table. Only argparse and the model at
import: `--help` of every command builds these.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventrouter.model import Settings

#: The defaults of the options that set the daemon's settings: written once, in Settings.
DEFAULTS = Settings()


def duration(text: str) -> float:
    """Read a duration option (``30s``, ``5m``, ``1.5``)."""
    # Imported here: the route loader (PyYAML, voluptuous, Jinja2) is not what --help needs.
    from eventrouter.config.loader import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive(text: str) -> int:
    """Read a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _folder(text: str) -> Path | None:
    return Path(text) if text else None  # an empty --state-dir is the default, as no option


@dataclass(frozen=True)
class Option:
    """One option: its flag, how it reads, its help, and the ``Settings`` field it sets."""

    flag: str
    help: str
    metavar: str | None = None
    convert: Callable[[str], Any] | None = None
    action: str | type[argparse.Action] = "store"
    #: The ``Settings`` field `run` sets from it; the option's default is that field's.
    field: str | None = None
    #: The default of an option that sets no field.
    default: Any = None

    @property
    def dest(self) -> str:
        """Return the name of the parsed argument."""
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, help: str | None = None) -> None:
        """Add the option to ``parser``, with a command's own ``help`` when given."""
        default = getattr(DEFAULTS, self.field) if self.field else self.default
        extra: dict[str, Any] = {"metavar": self.metavar} if self.metavar else {}
        if self.convert is not None:
            extra["type"] = self.convert
        parser.add_argument(
            self.flag, action=self.action, default=default, help=help or self.help, **extra
        )


#: Help of --redis for the commands that publish or reach the routers.
REDIS_HELP = (
    "default: $REDIS_ADDRESS (with $REDIS_USER/$REDIS_PASSWORD), else the embedded server of "
    "--state-dir"
)
#: Help of --redis for `failures` and `retry`, which read the failure journal.
JOURNAL_REDIS_HELP = (
    "the Redis holding the journal stream; default: $REDIS_ADDRESS (with "
    "$REDIS_USER/$REDIS_PASSWORD); without either, the journal is the file "
    "STATE_DIR/failures.jsonl (where a router on the embedded server keeps it)"
)
#: Help of --redis for `run`, which subscribes there.
RUN_REDIS_HELP = (
    "subscribe here (redis://, unix://); default: $REDIS_REPLICA_ADDRESS, else "
    "$REDIS_ADDRESS, else the embedded server"
)
#: Help of --max-depth for `explain` and `test`, which decide as the daemon does.
DAEMON_DEPTH = {"--max-depth": "loop-guard depth, as the daemon's (default: %(default)s)"}

_TABLE = (
    # Where the routes are, and who this router is: check, routes, explain, test, run...
    Option(
        "--routes",
        "routes folder (repeatable); default: $EVENTROUTER_ROUTES (':'-separated), "
        "else $AGENT_INSTALL_DIR/routes.d, else ./routes.d",
        "DIR",
        action="append",
    ),
    Option(
        "--events-dir",
        "NS8 events folder: <source>/event/<name> runs DIR/<name>/ (repeatable); "
        "default: $AGENT_INSTALL_DIR/events when set",
        "DIR",
        action="append",
    ),
    Option(
        "--node",
        "this router's node (router.node, runs_on); default: $NODE_ID, else NODE_ID "
        "in $AGENT_STATE_DIR/environment",
        "ID",
        field="node",
    ),
    Option(
        "--agent", "this router's agent (router.agent); default: $AGENT_ID", "ID", field="agent"
    ),
    Option(
        "--leader",
        "decide as the leader's router, or not (default: --leader, as a single node)",
        action=argparse.BooleanOptionalAction,
        default=True,
    ),
    Option(
        "--env-file",
        "KEY=VALUE lines (a module's environment file) for env in templates; the shell's "
        "environment is never read for it",
        "FILE",
    ),
    Option(
        "--env",
        "a variable for env in templates, over --env-file (repeatable)",
        "NAME=VALUE",
        _env_pair,
        action="append",
        default=[],  # argparse appends to a copy
    ),
    # Which Redis, and the router's state folder.
    Option("--redis", REDIS_HELP, "URL"),
    Option(
        "--publish-redis",
        "publish derived events here; default: $REDIS_ADDRESS, else the subscribe connection",
        "URL",
    ),
    Option(
        "--redis-password-file",
        "read the Redis password from FILE (its first line) for every connection; default: "
        "$REDIS_PASSWORD_FILE, else $CREDENTIALS_DIRECTORY/redis-password (systemd "
        "credentials), else $REDIS_PASSWORD with REDIS_ADDRESS",
        "FILE",
    ),
    Option(
        "--state-dir",
        "the router's state folder (journal file, pid file, embedded Redis); default: "
        "$EVENTROUTER_STATE_DIR, else systemd's $STATE_DIRECTORY/$RUNTIME_DIRECTORY, else "
        "$XDG_RUNTIME_DIR/eventrouter, else /run/eventrouter for root, else "
        "~/.local/state/eventrouter",
        "DIR",
        _folder,
        field="state_dir",
    ),
    # The daemon's bounds and timers.
    Option(
        "--step-timeout",
        "timeout of each step when the action sets none (default: none)",
        "DURATION",
        duration,
        field="step_timeout",
    ),
    Option(
        "--stop-timeout",
        "on SIGTERM, how long running steps may finish (default: %(default)gs)",
        "DURATION",
        duration,
        field="stop_timeout",
    ),
    Option(
        "--ping-interval",
        "PING the subscription connection after this long without traffic (default: %(default)gs)",
        "DURATION",
        duration,
        field="ping_interval",
    ),
    Option(
        "--ping-timeout",
        "replace the subscription connection when a PING is not answered within this "
        "long (default: %(default)gs)",
        "DURATION",
        duration,
        field="ping_timeout",
    ),
    Option(
        "--template-timeout",
        "a when:, key:, env: or emit template rendering longer is aborted with an error "
        "(default: %(default)gs)",
        "DURATION",
        duration,
        field="template_timeout",
    ),
    Option(
        "--max-concurrency",
        "steps running at once; more wait (default: %(default)s)",
        "N",
        positive,
        field="max_concurrency",
    ),
    Option(
        "--max-payload",
        "larger payloads are dropped with an error (default: %(default)s)",
        "BYTES",
        positive,
        field="max_payload",
    ),
    Option(
        "--max-depth",
        "longest chain of derived events before the loop guard cuts it (default: %(default)s)",
        "N",
        positive,
        field="max_depth",
    ),
    Option(
        "--queue-limit",
        "runs queued per route before new ones are dropped with an error (default: %(default)s)",
        "N",
        positive,
        field="queue_limit",
    ),
    Option(
        "--max-pending",
        "runs waiting in all queues together before new ones are dropped with an error "
        "(default: %(default)s)",
        "N",
        positive,
        field="max_pending",
    ),
    Option(
        "--max-queued-bytes",
        "payload bytes of the runs waiting in all queues together before new ones are "
        f"dropped with an error (default: %(default)s, {DEFAULTS.max_queued_bytes >> 20} MiB)",
        "BYTES",
        positive,
        field="max_queued_bytes",
    ),
    Option(
        "--journal-payload",
        "payload bytes a failure journal entry keeps; a longer payload is cut and the "
        "entry says so, and `retry` refuses it (default: %(default)s)",
        "BYTES",
        positive,
        field="journal_payload",
    ),
    # The failure journal and the control channel.
    Option(
        "--journal-key",
        "Redis stream of the failure journal (default: %(default)s); when this Redis user "
        "may not write it, the journal is STATE_DIR/failures.jsonl",
        "KEY",
        field="journal_key",
    ),
    Option(
        "--journal-size",
        "failures the journal keeps (default: %(default)s)",
        "N",
        positive,
        field="journal_size",
    ),
    Option(
        "--instance",
        "this router's name in the failure journal; retries go to it (default: host name)",
        "NAME",
        field="instance",
    ),
    Option(
        "--control-channel",
        "the routers' channel for `eventrouter retry` requests: where they arrive and "
        "where `retry` sends them (default: %(default)s)",
        "CHANNEL",
        field="control_channel",
    ),
    Option(
        "--role-interval",
        "read whether this router's Redis is the master this often, and on reconnect "
        "and leader-changed (default: %(default)gs)",
        "DURATION",
        duration,
        field="role_interval",
    ),
    Option(
        "--watch",
        "reload when a route file is created, changed, replaced or removed, as SIGHUP "
        "does (needs the 'watch' extra: watchfiles; default: off)",
        action="store_true",
        field="watch",
    ),
    Option(
        "--metrics",
        "serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 "
        "(needs the 'metrics' extra: prometheus-client; default: off)",
        "ADDR:PORT",
    ),
)
#: Every shared option and every option of `run`, by flag.
OPTIONS: dict[str, Option] = {option.flag: option for option in _TABLE}


def add(
    parser: argparse.ArgumentParser, *flags: str, helps: Mapping[str, str] | None = None
) -> None:
    """Add the options ``flags`` name to ``parser``; ``helps``: a command's own texts."""
    for flag in flags:
        OPTIONS[flag].add_to(parser, (helps or {}).get(flag))


def settings_from(args: argparse.Namespace, **resolved: Any) -> Settings:
    """Return the daemon's settings: each option that sets a field, then ``resolved``.

    ``resolved`` holds what `run` works out beyond an option's value: the routes and
    events folders and the Redis URLs (from the environment and the password file).
    """
    given = {
        option.field: getattr(args, option.dest)
        for option in _TABLE
        if option.field is not None and hasattr(args, option.dest)
    }
    return Settings(**(given | resolved))
