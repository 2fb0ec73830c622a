"""The command line: the argument parser, and ``main``, the only place that ends the process.

Exit status: 0 success, 1 invalid input or configuration, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from eventrouter import __version__
from eventrouter.cli import observe, pipes, schema
from eventrouter.model import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The defaults of the options that set the daemon's settings: written once, in Settings.
DEFAULTS = Settings()
CHANNEL_HELP = "the event's channel, <source>/event/<name>: cluster/event/module-added"


def _duration(text: str) -> float:
    # Imported here: the route loader (PyYAML, voluptuous, Jinja2) is not what --help needs.
    from eventrouter.config.loader import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def _add_route_options(parser: argparse.ArgumentParser, events: bool = True) -> None:
    parser.add_argument(
        "--routes",
        action="append",
        metavar="DIR",
        help="routes folder (repeatable); default: $EVENTROUTER_ROUTES (':'-separated), "
        "else $AGENT_INSTALL_DIR/routes.d, else ./routes.d",
    )
    if events:
        parser.add_argument(
            "--events-dir",
            action="append",
            metavar="DIR",
            help="NS8 events folder: <source>/event/<name> runs DIR/<name>/ (repeatable); "
            "default: $AGENT_INSTALL_DIR/events when set",
        )


def _add_password_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-password-file",
        metavar="FILE",
        help="read the Redis password from FILE (its first line) for every connection; "
        "default: $REDIS_PASSWORD_FILE, else $CREDENTIALS_DIRECTORY/redis-password (systemd "
        "credentials), else $REDIS_PASSWORD with REDIS_ADDRESS",
    )


def _add_router_options(parser: argparse.ArgumentParser, leader: bool = True) -> None:
    """Add --node and --agent (and, for explain and test, --leader/--no-leader)."""
    parser.add_argument(
        "--node",
        metavar="ID",
        help="this router's node (router.node, runs_on); default: $NODE_ID, else NODE_ID "
        "in $AGENT_STATE_DIR/environment",
    )
    parser.add_argument(
        "--agent", metavar="ID", help="this router's agent (router.agent); default: $AGENT_ID"
    )
    if leader:
        parser.add_argument(
            "--leader",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="decide as the leader's router, or not (default: --leader, as a single node)",
        )


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _add_env_options(parser: argparse.ArgumentParser) -> None:
    """Add --env and --env-file: what ``env`` holds in templates (never the shell's)."""
    parser.add_argument(
        "--env-file",
        metavar="FILE",
        help="KEY=VALUE lines (a module's environment file) for env in templates; the shell's "
        "environment is never read for it",
    )
    parser.add_argument(
        "--env",
        action="append",
        type=_env_pair,
        default=[],
        metavar="NAME=VALUE",
        help="a variable for env in templates, over --env-file (repeatable)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="subscribe here (redis://, unix://); "
        "default: $REDIS_REPLICA_ADDRESS, else $REDIS_ADDRESS, else the "
        "embedded server",
    )
    parser.add_argument(
        "--publish-redis",
        metavar="URL",
        help="publish derived events here; default: $REDIS_ADDRESS, else the subscribe connection",
    )
    _add_password_file(parser)
    parser.add_argument(
        "--step-timeout",
        type=_duration,
        metavar="DURATION",
        help="timeout of each step when the action sets none (default: none)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_duration,
        default=DEFAULTS.stop_timeout,
        metavar="DURATION",
        help="on SIGTERM, how long running steps may finish (default: %(default)gs)",
    )
    parser.add_argument(
        "--ping-interval",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="PING the subscription connection after this long without traffic (default: 10s)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=_duration,
        default=5.0,
        metavar="DURATION",
        help="replace the subscription connection when a PING is not answered within this "
        "long (default: 5s)",
    )
    parser.add_argument(
        "--template-timeout",
        type=_duration,
        default=Settings.template_timeout,
        metavar="DURATION",
        help="a when:, key:, env: or emit template rendering longer is aborted with an error "
        f"(default: {Settings.template_timeout:g}s)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=_positive,
        default=DEFAULTS.max_concurrency,
        metavar="N",
        help="steps running at once; more wait (default: %(default)s)",
    )
    parser.add_argument(
        "--max-payload",
        type=_positive,
        default=DEFAULTS.max_payload,
        metavar="BYTES",
        help="larger payloads are dropped with an error (default: %(default)s)",
    )
    parser.add_argument(
        "--max-depth",
        type=_positive,
        default=DEFAULTS.max_depth,
        metavar="N",
        help="longest chain of derived events before the loop guard cuts it (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-limit",
        type=_positive,
        default=DEFAULTS.queue_limit,
        metavar="N",
        help="runs queued per route before new ones are dropped with an error "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-pending",
        type=_positive,
        default=DEFAULTS.max_pending,
        metavar="N",
        help="runs waiting in all queues together before new ones are dropped with an error "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=_positive,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="payload bytes of the runs waiting in all queues together before new ones are "
        "dropped with an error (default: 67108864, 64 MiB)",
    )
    parser.add_argument(
        "--journal-payload",
        type=_positive,
        default=DEFAULTS.journal_payload,
        metavar="BYTES",
        help="payload bytes a failure journal entry keeps; a longer payload is cut and the "
        "entry says so, and `retry` refuses it (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state folder (journal file, pid file, embedded Redis); default: "
        "$EVENTROUTER_STATE_DIR, else systemd's $STATE_DIRECTORY/$RUNTIME_DIRECTORY, else "
        "$XDG_RUNTIME_DIR/eventrouter, else /run/eventrouter for root, else "
        "~/.local/state/eventrouter",
    )
    _add_journal_key(parser)
    parser.add_argument(
        "--journal-size",
        type=_positive,
        default=DEFAULTS.journal_size,
        metavar="N",
        help="failures the journal keeps (default: %(default)s)",
    )
    parser.add_argument(
        "--instance",
        default=DEFAULTS.instance,
        metavar="NAME",
        help="this router's name in the failure journal; retries go to it (default: host name)",
    )
    parser.add_argument(
        "--control-channel",
        default=DEFAULTS.control_channel,
        metavar="CHANNEL",
        help="where `eventrouter retry` requests arrive (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 "
        "(needs the 'metrics' extra: prometheus-client; default: off)",
    )


def _add_journal_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal-key",
        default=DEFAULTS.journal_key,
        metavar="KEY",
        help="Redis stream of the failure journal (default: %(default)s); when this "
        "Redis user may not write it, the journal is STATE_DIR/failures.jsonl",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="eventrouter",
        description="Declarative event router for Redis pub/sub (NethServer 8 conventions).",
    )
    parser.add_argument("--version", action="version", version=f"eventrouter {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=LOG_LEVELS,
        help="default: INFO",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="the daemon: subscribe, route events, run handlers",
        description="Route events until SIGTERM/SIGINT; SIGHUP (and, with --watch, saving a "
        "route file) reloads the route files.",
    )
    _add_route_options(run)
    _add_run_options(run)
    _add_router_options(run, leader=False)
    run.add_argument(
        "--role-interval",
        type=_duration,
        default=DEFAULTS.role_interval,
        metavar="DURATION",
        help="read whether this router's Redis is the master this often, and on reconnect "
        "and leader-changed (default: %(default)gs)",
    )
    run.add_argument(
        "--watch",
        action="store_true",
        default=DEFAULTS.watch,
        help="reload when a route file is created, changed, replaced or removed, as SIGHUP "
        "does (needs the 'watch' extra: watchfiles; default: off)",
    )
    run.set_defaults(handler="cmd_run")

    check = commands.add_parser(
        "check",
        help="validate the route files (no Redis needed)",
        description="Print FILE:LINE: error|warning: message for "
        "every finding; exit 1 on any error.",
    )
    _add_route_options(check)
    check.set_defaults(handler="cmd_check")

    routes = commands.add_parser(
        "routes",
        help="list the loaded routes",
        description="List name, patterns, actions, file and line of each route, then the "
        "events folders (events:<name>) that --events-dir gives.",
    )
    _add_route_options(routes)
    routes.set_defaults(handler="cmd_routes")

    explain = commands.add_parser(
        "explain",
        help="dry run: what an event would trigger, and why",
        description="Show which routes and events folders an event matches, each condition's "
        "result, the rendered derived events and the cascade they trigger, and the steps that "
        "would run. No Redis, no side effects.",
    )
    _add_route_options(explain)
    _add_router_options(explain)
    _add_env_options(explain)
    explain.add_argument("--json", action="store_true", help="one JSON document")
    explain.add_argument(
        "--verbose", "-v", action="store_true", help="also list the routes that do not match"
    )
    explain.add_argument(
        "--max-depth",
        type=_positive,
        default=DEFAULTS.max_depth,
        metavar="N",
        help="loop-guard depth, as the daemon's (default: %(default)s)",
    )
    explain.add_argument("channel", metavar="CHANNEL", help=CHANNEL_HELP)
    explain.add_argument(
        "payload",
        metavar="PAYLOAD",
        nargs="?",
        help="the payload; '-' reads standard input (default: stdin when it "
        "is not a terminal, else empty)",
    )
    explain.set_defaults(handler="cmd_explain")

    test = commands.add_parser(
        "test",
        help="run route unit tests: event in, expected routes/events/steps out",
        description="Check route test files (default: tests/*.yml and tests/*.yaml in each "
        "routes folder) with the engine of `explain`; exit 1 on any mismatch.",
    )
    _add_route_options(test)
    _add_router_options(test)
    _add_env_options(test)
    test.add_argument("files", metavar="FILE", nargs="*", help="route test files")
    test.add_argument(
        "--max-depth",
        type=_positive,
        default=DEFAULTS.max_depth,
        metavar="N",
        help="loop-guard depth, as the daemon's (default: %(default)s)",
    )
    test.set_defaults(handler="cmd_test")

    publish = commands.add_parser(
        "publish",
        help="publish an event",
        description="Publish an event and print how many receivers Redis counted: one per "
        "matching pattern of each subscriber, so one router may count twice. The payload "
        "must be a JSON object and well-known events must carry their documented fields, "
        "unless --raw is given.",
    )
    publish.add_argument(
        "--redis",
        metavar="URL",
        help="default: $REDIS_ADDRESS (with $REDIS_USER/$REDIS_PASSWORD), else the embedded server",
    )
    _add_password_file(publish)
    publish.add_argument(
        "--raw", action="store_true", help="publish the payload as is, without any check"
    )
    publish.add_argument("--state-dir", metavar="DIR", help="where the embedded server runs")
    _add_route_options(publish, events=False)  # for the event schemas declared there
    publish.add_argument("channel", metavar="CHANNEL", help=CHANNEL_HELP)
    publish.add_argument(
        "payload",
        metavar="PAYLOAD",
        nargs="?",
        help="the payload; '-' or none reads standard input",
    )
    publish.set_defaults(handler="publish:cmd_publish")
    _add_journal_commands(commands)
    _add_reload(commands)
    observe.add_commands(commands)
    schema.add_command(commands)
    for name in ("status", "history"):  # they reach Redis as `publish` does
        _add_password_file(commands.choices[name])
    for sub in commands.choices.values():  # also accepted after the command
        sub.add_argument(
            "--log-level",
            default=argparse.SUPPRESS,
            choices=LOG_LEVELS,
            help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
        )
    return parser


def _add_journal_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="the Redis holding the journal stream; default: $REDIS_ADDRESS (with "
        "$REDIS_USER/$REDIS_PASSWORD); without either, the journal is the file "
        "STATE_DIR/failures.jsonl (where a router on the embedded server keeps it)",
    )
    _add_password_file(parser)
    parser.add_argument("--state-dir", metavar="DIR", help="the router's state folder")
    _add_journal_key(parser)


def _add_journal_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    failures = commands.add_parser(
        "failures",
        help="list the failed runs in the failure journal",
        description="List failed runs, newest first: id, time, instance, route, channel, "
        "status, step and the last output lines.",
    )
    _add_journal_source(failures)
    failures.add_argument("--route", metavar="NAME", help="only this route (a glob)")
    failures.add_argument(
        "--event", metavar="PATTERN", help="only events whose channel or name matches (a glob)"
    )
    failures.add_argument("--limit", type=_positive, default=50, metavar="N", help="default: 50")
    failures.add_argument("--json", action="store_true", help="a JSON list")
    failures.set_defaults(handler="cmd_failures")

    retry = commands.add_parser(
        "retry",
        help="run a failed route again on its event, through the daemon",
        description="Look failure ID up and ask the router that recorded it, on the control "
        "channel, to run the route's current version on that event again. The request "
        "goes to --redis, else $REDIS_ADDRESS, else the embedded server of the state folder "
        "when it answers.",
    )
    _add_journal_source(retry)
    retry.add_argument(
        "--control-channel",
        default=DEFAULTS.control_channel,
        metavar="CHANNEL",
        help="where the routers listen (default: %(default)s)",
    )
    retry.add_argument("id", metavar="ID", help="the failure's id, as `failures` lists it")
    retry.set_defaults(handler="cmd_retry")


def _add_reload(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reload = commands.add_parser(
        "reload",
        help="reload the routes of the running router and print the result",
        description="Send SIGHUP to the router of this state folder (its pid file) and print "
        "the result of that reload: the summary line, or the errors for which it kept the "
        "routes it had. Exit 1 on errors, or when no router runs.",
    )
    reload.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the router's state folder, as given to `run` (same default)",
    )
    reload.add_argument(
        "--timeout",
        type=_duration,
        default=30.0,
        metavar="DURATION",
        help="how long to wait for the result (default: %(default)gs)",
    )
    reload.set_defaults(handler="cmd_reload")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (141 when its reader went away)."""
    return pipes.quietly(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from eventrouter.cli import logs  # logging: not what --help needs

    logs.setup(args.log_level)
    # Imported once the command is known: each command imports what it needs itself, so
    # `--help` and `check` never load the runtime (asyncio, redis-py, the step spawner).
    module, _, name = args.handler.rpartition(":")
    commands = importlib.import_module(f"eventrouter.cli.{module or 'commands'}")
    handler: Callable[[argparse.Namespace], int] = getattr(commands, name)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
