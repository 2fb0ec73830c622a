"""The command line: the argument parser, and ``main``, the only place that ends the process.

Exit status: 0 success, 1 invalid input or configuration, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from eventrouter import __version__
from eventrouter.cli import options, pipes, schema, status

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CHANNEL_HELP = "the event's channel, <source>/event/<name>: cluster/event/module-added"
#: The options of `run`, in the order its help lists them (each declared in cli/options.py).
RUN_OPTIONS = (
    "--routes", "--events-dir", "--redis", "--publish-redis", "--redis-password-file",
    "--step-timeout", "--stop-timeout", "--ping-interval", "--ping-timeout",
    "--template-timeout", "--max-concurrency", "--max-payload", "--max-depth", "--queue-limit",
    "--max-pending", "--max-queued-bytes", "--journal-payload", "--state-dir", "--journal-key",
    "--journal-size", "--instance", "--control-channel", "--metrics", "--node", "--agent",
    "--role-interval", "--watch",
)  # fmt: skip
#: What `explain` and `test` decide from, beside the routes: the router and ``env``.
DECIDE_OPTIONS = (
    "--routes", "--events-dir", "--node", "--agent", "--leader", "--env-file", "--env",
)  # fmt: skip
#: Where `failures` and `retry` find the failure journal.
JOURNAL_OPTIONS = ("--redis", "--redis-password-file", "--state-dir", "--journal-key")


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="eventrouter",
        description="Declarative event router for Redis pub/sub (NethServer 8 conventions).",
    )
    parser.add_argument("--version", action="version", version=f"eventrouter {__version__}")
    _add_log_level(parser, "INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="the daemon: subscribe, route events, run handlers",
        description="Route events until SIGTERM/SIGINT; SIGHUP (and, with --watch, saving a "
        "route file) reloads the route files.",
    )
    options.add(run, *RUN_OPTIONS, helps={"--redis": options.RUN_REDIS_HELP})
    run.set_defaults(handler="cmd_run")
    _add_tools(commands)
    _add_publish(commands)
    _add_journal_commands(commands)
    _add_reload(commands)
    status.add_commands(commands)
    schema.add_command(commands)
    for sub in commands.choices.values():  # also accepted after the command
        _add_log_level(sub, argparse.SUPPRESS)
    return parser


def _add_tools(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands that read the route files alone: check, routes, explain, test."""
    check = commands.add_parser(
        "check",
        help="validate the route files (no Redis needed)",
        description="Print FILE:LINE: error|warning: message for "
        "every finding; exit 1 on any error.",
    )
    options.add(check, "--routes", "--events-dir")
    check.set_defaults(handler="cmd_check")

    routes = commands.add_parser(
        "routes",
        help="list the loaded routes",
        description="List name, patterns, actions, file and line of each route, then the "
        "events folders (events:<name>) that --events-dir gives.",
    )
    options.add(routes, "--routes", "--events-dir")
    routes.set_defaults(handler="cmd_routes")

    explain = commands.add_parser(
        "explain",
        help="dry run: what an event would trigger, and why",
        description="Show which routes and events folders an event matches, each condition's "
        "result, the rendered derived events and the cascade they trigger, and the steps that "
        "would run. No Redis, no side effects.",
    )
    options.add(explain, *DECIDE_OPTIONS)
    explain.add_argument("--json", action="store_true", help="one JSON document")
    explain.add_argument(
        "--verbose", "-v", action="store_true", help="also list the routes that do not match"
    )
    options.add(explain, "--max-depth", helps=options.DAEMON_DEPTH)
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
    options.add(test, *DECIDE_OPTIONS)
    test.add_argument("files", metavar="FILE", nargs="*", help="route test files")
    options.add(test, "--max-depth", helps=options.DAEMON_DEPTH)
    test.set_defaults(handler="cmd_test")


def _add_publish(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish an event",
        description="Publish an event and print how many receivers Redis counted: one per "
        "matching pattern of each subscriber, so one router may count twice. The payload "
        "must be a JSON object and well-known events must carry their documented fields, "
        "unless --raw is given.",
    )
    options.add(publish, "--redis", "--redis-password-file")
    publish.add_argument(
        "--raw", action="store_true", help="publish the payload as is, without any check"
    )
    # --routes: for the event schemas declared there.
    options.add(publish, "--state-dir", "--routes")
    publish.add_argument("channel", metavar="CHANNEL", help=CHANNEL_HELP)
    publish.add_argument(
        "payload",
        metavar="PAYLOAD",
        nargs="?",
        help="the payload; '-' or none reads standard input",
    )
    publish.set_defaults(handler="publish:cmd_publish")


def _add_journal_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    journal = {"--redis": options.JOURNAL_REDIS_HELP}
    failures = commands.add_parser(
        "failures",
        help="list the failed runs in the failure journal",
        description="List failed runs, newest first: id, time, instance, route, channel, "
        "status, step and the last output lines.",
    )
    options.add(failures, *JOURNAL_OPTIONS, helps=journal)
    failures.add_argument("--route", metavar="NAME", help="only this route (a glob)")
    failures.add_argument(
        "--event", metavar="PATTERN", help="only events whose channel or name matches (a glob)"
    )
    failures.add_argument(
        "--limit", type=options.positive, default=50, metavar="N", help="default: 50"
    )
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
    options.add(retry, *JOURNAL_OPTIONS, "--control-channel", helps=journal)
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
    options.add(reload, "--state-dir")
    reload.add_argument(
        "--timeout",
        type=options.duration,
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
