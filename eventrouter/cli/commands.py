"""What each command does; ``cli`` parses the arguments and hands them here.

Every command returns its exit status (0 success, 1 invalid input or configuration); only
``cli.main`` ends the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from eventrouter.cli import options
from eventrouter.cli.logs import escape
from eventrouter.errors import Diagnostic
from eventrouter.model import Route, RouterInfo

# The tools (check, explain, test, routes) must not load the runtime: asyncio, redis-py and
# the step spawner are imported inside the commands that use them (tests/test_imports.py).
if TYPE_CHECKING:
    from eventrouter.config.loader import FileCache, LoadResult
    from eventrouter.runtime.journal import Failure, Journal

T = TypeVar("T")
log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID = 0, 1


def show(*lines: str) -> None:
    """Print lines for a terminal, control characters from events or files escaped."""
    for line in lines:
        print(escape(line))


def routes_dirs(flags: Sequence[str] | None, env: Mapping[str, str]) -> tuple[list[Path], bool]:
    """Return the routes folders and whether they were named explicitly."""
    if flags:
        return [Path(item) for item in flags], True
    if env.get("EVENTROUTER_ROUTES"):
        return [Path(item) for item in env["EVENTROUTER_ROUTES"].split(":") if item], True
    if env.get("AGENT_INSTALL_DIR"):
        return [Path(env["AGENT_INSTALL_DIR"]) / "routes.d"], True
    return [Path("routes.d")], False


def events_dirs(flags: Sequence[str] | None, env: Mapping[str, str]) -> list[Path]:
    """Return the events folders: --events-dir, else $AGENT_INSTALL_DIR/events."""
    if flags:
        return [Path(item) for item in flags]
    if env.get("AGENT_INSTALL_DIR"):
        return [Path(env["AGENT_INSTALL_DIR"]) / "events"]
    return []


def _load(
    args: argparse.Namespace, cache: FileCache | None = None
) -> tuple[LoadResult, list[Path]]:
    from eventrouter.config.loader import load_routes

    folders, explicit = routes_dirs(args.routes, os.environ)
    if not explicit and not folders[0].is_dir():
        folders = []  # the default ./routes.d is optional
    return load_routes(folders, cache), folders


def looked_in(folders: Sequence[Path]) -> str:
    """Return where route files were looked for, for the messages about finding none."""
    if folders:
        return ", ".join(str(folder) for folder in folders)
    return (
        "./routes.d (not found; give --routes DIR, or set EVENTROUTER_ROUTES or AGENT_INSTALL_DIR)"
    )


def _nothing(routes: Sequence[Route], folders: Sequence[Path], events: Sequence[Path]) -> str:
    """Return why nothing can ever run (no routes, no events folder), or "" when something can.

    A forgotten --routes must not look like a clean result.
    """
    if routes or events:
        return ""
    return f"no routes in {looked_in(folders)}, and no --events-dir"


def _load_valid(args: argparse.Namespace) -> tuple[LoadResult, list[Path]] | None:
    """Load the routes, printing findings on stderr; None when any is an error."""
    result, folders = _load(args)
    for item in result.diagnostics:
        print(item, file=sys.stderr)
    return (result, folders) if result.ok else None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate route files and events folders; print findings on stdout."""
    from eventrouter.analysis.verdict import validate

    folders = events_dirs(args.events_dir, os.environ)
    loaded, searched = _load(args)
    result = validate(loaded, folders)
    findings = list(result.diagnostics)
    for folder in folders:  # `run` only warns: the folder may appear later
        if not folder.is_dir():
            findings.append(Diagnostic(str(folder), 0, "error", "events folder does not exist"))
    show(*(str(item) for item in findings))
    errors = sum(1 for item in findings if item.severity == "error")
    empty = _nothing(result.routes, searched, folders)
    if empty and not errors:  # the errors, when there are any, say why there is no route
        print(f"eventrouter check: nothing to check: {empty}", file=sys.stderr)
        return EXIT_INVALID
    counts = (
        _count(len(result.routes), "route"),
        _count(errors, "error"),
        _count(len(findings) - errors, "warning"),
    )
    print("{} checked: {}, {}".format(*counts), file=sys.stderr)
    return EXIT_INVALID if errors else EXIT_OK


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _describe(route: Route) -> str:
    parts = []
    for action in route.actions:
        parts.append(action.describe())
    return "; ".join(parts)


def cmd_routes(args: argparse.Namespace) -> int:
    """List the routes with patterns, actions and origin, then the events folders."""
    loaded = _load_valid(args)
    if loaded is None:
        return EXIT_INVALID
    result = loaded[0]
    for route in result.routes:
        state = "" if route.enabled else " (disabled)"
        show(
            f"{route.name}{state}\t{', '.join(p.text for p in route.patterns)}\t"
            f"{_describe(route)}\t{route.file}:{route.line}"
        )
    from eventrouter.engine.events import convention_label

    for base in events_dirs(args.events_dir, os.environ):
        folders = (
            sorted(entry for entry in base.iterdir() if entry.is_dir()) if base.is_dir() else []
        )
        for folder in folders:  # the names `test` and `explain` give them
            show(f"{convention_label(folder)}\t*/event/{folder.name}\trun {folder}\t{base}")
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> Path:
    from eventrouter.redis import embedded

    folder: Path | None = args.state_dir  # already a Path (cli/options.py)
    return folder or embedded.default_state_dir()


def _write_url(args: argparse.Namespace) -> str | None:
    """Return where writes go: --redis, $REDIS_ADDRESS, the embedded server if it answers."""
    from eventrouter.redis import embedded
    from eventrouter.redis.connections import publish_url

    if args.redis or os.environ.get("REDIS_ADDRESS"):
        return publish_url(args.redis, os.environ, None, args.redis_password_file)
    socket = embedded.socket_path(_state_dir(args))
    return embedded.unix_url(socket) if embedded.ping(socket) else None


def _journal_url(args: argparse.Namespace) -> str | None:
    """Return the Redis holding the failure journal; None: the local file.

    The embedded server keeps nothing across restarts, so with it the journal is the file
    in the state folder, as the daemon does.
    """
    if args.redis or os.environ.get("REDIS_ADDRESS"):
        return _write_url(args)
    return None


def _payload(argument: str | None) -> bytes:
    if argument == "-" or (argument is None and not sys.stdin.isatty()):
        return sys.stdin.buffer.read()
    return (argument or "").encode()


async def _with_journal(
    url: str | None, args: argparse.Namespace, work: Callable[[Journal], Awaitable[T]]
) -> T:
    from eventrouter.redis.stream_journal import open_reader

    # The stream and the local file together; an unreachable Redis is an error, not the file.
    book = open_reader(url, args.journal_key, _state_dir(args))
    try:
        return await work(book)
    finally:
        await book.close()


def _failure_lines(failure: Failure) -> list[str]:
    from datetime import datetime

    stamp = datetime.fromtimestamp(failure.time).isoformat(sep=" ", timespec="seconds")
    step = f"  step {failure.step}" if failure.step else ""
    payload = failure.payload if len(failure.payload) <= 200 else failure.payload[:200] + "…"
    if failure.payload_cut:
        payload += f" [the journal kept {len(failure.raw())} of {failure.payload_cut} bytes]"
    return [
        f"{failure.id}  {stamp}  {failure.instance}  {failure.route}  {failure.channel}  "
        f"{failure.status}{step}",
        f"  action {failure.action_index}: {failure.action}; payload: {payload}",
        # The reason is what to act on: "task failed" alone does not say which task or why.
        *([f"  reason: {failure.reason}"] if failure.reason != failure.status else []),
        *(f"    {line}" for line in failure.tail),
    ]


def cmd_failures(args: argparse.Namespace) -> int:
    """List the failed runs in the failure journal, newest first."""
    import asyncio

    from eventrouter.runtime.journal import JournalError

    async def fetch(book: Journal) -> tuple[str, list[Failure]]:
        found = await book.list(limit=args.limit, route=args.route, event=args.event)
        return book.where, found

    try:
        where, failures = asyncio.run(_with_journal(_journal_url(args), args, fetch))
    except (JournalError, ValueError) as exc:
        print(f"eventrouter failures: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps([item.to_json() for item in failures], indent=2, ensure_ascii=False))
    elif not failures:
        what = "no failures match" if args.route or args.event else "no failures recorded"
        print(f"{what} ({where})")
    else:
        for item in failures:
            show(*_failure_lines(item))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Ask the router that recorded a failure to run its route again on that event."""
    import asyncio

    from eventrouter.redis import bus
    from eventrouter.runtime.journal import JournalError, retry_message

    async def look(book: Journal) -> tuple[str, Failure | None]:
        return book.where, await book.get(args.id)

    try:
        url = _write_url(args)
        where, failure = asyncio.run(_with_journal(_journal_url(args), args, look))
    except (JournalError, ValueError) as exc:
        print(f"eventrouter retry: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if failure is None:
        print(f"eventrouter retry: no failure {args.id!r} in the {where}", file=sys.stderr)
        return EXIT_INVALID
    what = f"{failure.id} (route {failure.route} on {failure.channel}, by {failure.instance})"
    listening = f"no router is listening on {args.control_channel}; is `eventrouter run` running?"
    if url is None:
        print(f"eventrouter retry {what}: no Redis to reach it: {listening}", file=sys.stderr)
        return EXIT_INVALID
    try:
        receivers = asyncio.run(bus.publish_once(url, args.control_channel, retry_message(failure)))
    except ConnectionError as exc:
        print(f"eventrouter retry {what}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if receivers == 0:
        print(f"eventrouter retry {what}: {listening}", file=sys.stderr)
        return EXIT_INVALID
    # Said only now: a "retrying" line before an error reads as if something was retried.
    print(
        f"asked router {failure.instance} on {args.control_channel} ({receivers} receiver(s)) "
        f"to retry {failure.id}: route {failure.route} on {failure.channel}"
    )
    return EXIT_OK


def _router(args: argparse.Namespace) -> RouterInfo:
    """Return where explain and test decide from: --node, --agent, --leader/--no-leader."""
    from eventrouter.runtime.identity import instance_name, router_identity

    return router_identity(
        args.node, args.agent, os.environ, instance=instance_name(""), leader=args.leader
    )


def _template_env(args: argparse.Namespace, command: str) -> dict[str, str] | None:
    """Return ``env`` for templates from --env-file and --env; None after printing an error."""
    from eventrouter.runtime.envfile import parse_environment

    env: dict[str, str] = {}
    if args.env_file:
        try:
            with open(args.env_file, "rb") as handle:
                env = parse_environment(handle.read(), args.env_file)
        except OSError as exc:
            print(
                f"eventrouter {command}: --env-file {args.env_file}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return None
    return env | dict(args.env)


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain what an event would trigger, without Redis."""
    from eventrouter.analysis.explain import Explainer, format_text

    env = _template_env(args, "explain")
    loaded = _load_valid(args) if env is not None else None
    if loaded is None or env is None:
        return EXIT_INVALID
    events = events_dirs(args.events_dir, os.environ)
    explainer = Explainer(loaded[0].routes, events, args.max_depth, router=_router(args), env=env)
    plan = explainer.explain(args.channel, _payload(args.payload))
    empty = _nothing(loaded[0].routes, loaded[1], events)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2, ensure_ascii=False))
        if empty:
            print(f"eventrouter explain: no routes loaded: {empty}", file=sys.stderr)
    else:
        show(*format_text(plan, verbose=args.verbose))
        if empty:
            show(f"  (no routes loaded: {empty})")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    """Run route unit tests."""
    from eventrouter.analysis import routetest
    from eventrouter.analysis.explain import Explainer

    env = _template_env(args, "test")
    loaded = _load_valid(args) if env is not None else None
    if loaded is None or env is None:
        return EXIT_INVALID
    result, folders = loaded
    explainer = Explainer(
        result.routes,
        events_dirs(args.events_dir, os.environ),
        args.max_depth,
        router=_router(args),
        env=env,
    )
    files = [Path(item) for item in args.files] or routetest.default_files(folders)
    searched = [folder / "tests" for folder in folders]
    return routetest.run(files, explainer, sys.stdout, searched)


def cmd_run(args: argparse.Namespace) -> int:
    """Start the daemon."""
    from eventrouter.service import apart, metrics, watch

    address = None
    if args.metrics:
        problem = metrics.missing()
        if problem is not None:
            print(f"eventrouter run: {problem}", file=sys.stderr)
            return EXIT_INVALID
        try:
            address = metrics.parse_address(args.metrics)
        except ValueError as exc:
            print(f"eventrouter run: --metrics: {exc}", file=sys.stderr)
            return EXIT_INVALID

    if args.watch and watch.missing() is not None:
        print(f"eventrouter run: {watch.missing()}", file=sys.stderr)
        return EXIT_INVALID

    cache: FileCache = {}
    result, folders = _load(args, cache)
    events = events_dirs(args.events_dir, os.environ)
    # The deep check runs here too (`run` refuses what `check` errors on), in a child
    # process: its working memory never becomes the router's, and it runs while this one
    # imports what routing needs.
    checking = apart.start(result, events)
    import asyncio
    import signal

    from eventrouter.config.templates import set_timeout
    from eventrouter.redis.connections import publish_url, subscribe_url
    from eventrouter.service.daemon import Daemon
    from eventrouter.service.reloading import log_diagnostics

    result = apart.outcome(checking, result, events)
    log_diagnostics(result)
    if not result.ok:
        from eventrouter.analysis.verdict import where_errors_are

        where = where_errors_are(result, events)
        print(f"eventrouter run: {where} (listed above); not starting", file=sys.stderr)
        return EXIT_INVALID
    try:
        # Resolved here, with the password from a file or credential when one is given.
        sub = subscribe_url(args.redis, os.environ, args.redis_password_file)
        pub = publish_url(args.publish_redis, os.environ, sub, args.redis_password_file)
    except ValueError as exc:
        print(f"eventrouter run: {exc}", file=sys.stderr)
        return EXIT_INVALID
    empty = _nothing(result.routes, folders, events)
    if empty:  # it may be meant (routes added later, then SIGHUP), so a warning, not a refusal
        log.warning("nothing to route: %s; events will run nothing until a reload", empty)
    settings = options.settings_from(
        args,
        routes_dirs=tuple(folders),
        events_dirs=tuple(events),
        redis_url=sub,
        publish_url=pub,
    )
    set_timeout(settings.template_timeout)
    try:
        status = asyncio.run(Daemon(settings, result, cache, metrics=address).run())
        # Stopped in order: a repeated SIGTERM/SIGINT must not turn the exit into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return status
    except (OSError, RuntimeError, ValueError) as exc:  # OSError: e.g. --metrics port taken
        print(f"eventrouter run: {exc}", file=sys.stderr)
        return EXIT_INVALID


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP the router of the state folder; print the result of that reload."""
    from eventrouter.service.statefiles import request_reload

    folder = _state_dir(args)
    found = request_reload(folder, args.timeout)
    if isinstance(found, str):
        print(f"eventrouter reload: {found}", file=sys.stderr)
        return EXIT_INVALID
    for line in found.details:
        print(line)
    print(found.summary)
    return EXIT_OK if found.ok else EXIT_INVALID
