"""`eventrouter status` and `eventrouter history`: ask the running routers, print the answers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from eventrouter.cli import options
from eventrouter.cli.logs import escape
from eventrouter.runtime import control


def _add_common(parser: argparse.ArgumentParser) -> None:
    options.add(
        parser,
        "--redis",
        "--redis-password-file",
        "--state-dir",
        "--instance",
        helps={
            "--redis": f"where the routers listen; {options.REDIS_HELP}",
            "--instance": "the router to ask, as its --instance (default: the host name)",
        },
    )
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `status` and `history` subcommands."""
    status = commands.add_parser(
        "status",
        help="ask the running router (or all of them) how it is doing",
        description="Ask over the control channel: instance, node, pid, uptime, Redis "
        "connections, route table generation and digest, queues, running steps, counters. "
        "Exit 1 when no router answers.",
    )
    _add_common(status)
    status.add_argument(
        "--all",
        action="store_true",
        help=f"every router that answers within {control.COLLECT_ALL:g}s",
    )
    status.set_defaults(handler="status:cmd_status")
    history = commands.add_parser(
        "history",
        help="the last events a router handled, and what each route did (or why not)",
        description="The last events, newest first, each with every route considered and its "
        "outcome: condition false (with the value), skipped here, coalesced, dropped (why), "
        "cut by the loop guard, ran (duration, status), failed; derived events linked to the "
        "event behind them. Exit 1 when no router answers.",
    )
    _add_common(history)
    history.add_argument(
        "--route",
        metavar="R",
        help="only the events this route (a glob) matched; with --verbose every event, "
        "'did not match' included; a name no route has is an error",
    )
    history.add_argument(
        "--event", metavar="GLOB", help="only events whose channel or name matches"
    )
    history.add_argument(
        "--limit",
        type=int,
        default=20,
        choices=range(1, control.LIMIT_MAX + 1),
        metavar="N",
        help=f"events shown, 1 to {control.LIMIT_MAX} (default: 20)",
    )
    history.add_argument(
        "--verbose", "-v", action="store_true", help="also list the routes that did not match"
    )
    history.set_defaults(handler="status:cmd_history")


def _ask(args: argparse.Namespace, query: control.Query, *, every: bool) -> list[dict[str, Any]]:
    """Send ``query``; return the answers (raise ConnectionError, LookupError)."""
    import asyncio

    from eventrouter.cli import elsewhere
    from eventrouter.cli.commands import _state_dir, _write_url  # not what --help needs
    from eventrouter.redis import embedded
    from eventrouter.redis.ask import ask

    url = _write_url(args)
    if url is None:
        socket = embedded.socket_path(_state_dir(args))
        raise LookupError(
            f"no Redis configured and no embedded server answers at {socket}; pass --redis "
            f"URL{elsewhere.hint(socket)}"
        )
    wait = control.COLLECT_ALL if every else control.WAIT_ONE
    raw = asyncio.run(
        ask(url, control.QUERY_CHANNEL, query.to_bytes(), query.reply, wait=wait, first=not every)
    )
    answers = [item for item in map(control.parse_answer, raw) if item is not None]
    return sorted(answers, key=lambda item: str(item["instance"]))


def _run(args: argparse.Namespace, query: control.Query, *, every: bool) -> list[dict[str, Any]]:
    try:
        answers = _ask(args, query, every=every)
    except (ConnectionError, LookupError) as exc:
        print(f"eventrouter {query.op}: {exc}", file=sys.stderr)
        return []
    if not answers:
        who = "no router answered" if every else f"router {query.instance!r} did not answer"
        print(
            f"eventrouter {query.op}: {who} on {control.QUERY_CHANNEL}; "
            "is `eventrouter run` running?",
            file=sys.stderr,
        )
    return answers


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of the router named (or of every router that answers)."""
    from eventrouter.cli import commands
    from eventrouter.runtime.identity import instance_name

    instance = control.ALL if args.all else instance_name(args.instance)
    query = control.Query("status", instance, control.reply_channel())
    answers = _run(args, query, every=args.all)
    if not answers:
        return commands.EXIT_INVALID
    if args.json:
        print(json.dumps(answers if args.all else answers[0], indent=2, ensure_ascii=False))
        return commands.EXIT_OK
    digests = {item.get("routes", {}).get("digest") for item in answers}
    for item in answers:
        print("\n".join(status_lines(item)))
    if len(digests) > 1:
        print(f"route tables differ between routers: {len(digests)} digests")
    return commands.EXIT_OK


def _join(counts: dict[str, Any]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


def status_lines(item: dict[str, Any]) -> list[str]:
    """Return one router's status as text."""
    redis, routes, counters = item["redis"], item["routes"], item["counters"]
    sub, pub = redis["subscribe"], redis["publish"]
    where = ", ".join(
        f"{key} {item[key]}" for key in ("node", "agent") if item.get(key) is not None
    )
    outage = sub.get("last_outage")
    if outage:
        end = _clock(outage["end"]) if outage["end"] else "now"
        last = f"{_clock(outage['start'])} to {end} ({outage['seconds']:.1f}s)"
    else:
        last = "none"
    state = "connected" if sub["connected"] else "NOT connected"
    return [
        f"{item['instance']}{f' ({where})' if where else ''}: pid {item['pid']}, "
        f"up {item['uptime']:.0f}s, eventrouter {item['version']}",
        f"  subscribe {sub['url']}: {state}, {sub['role']}, {len(sub['patterns'])} patterns, "
        f"{sub['reconnects']} reconnects, last outage {last}",
        f"  publish {pub['url']}: {pub['outbox']} in the outbox, {pub['sent']} sent, "
        f"{pub['refused']} refused",
        f"  routes: {routes['count']}, generation {routes['generation']}, "
        f"digest {routes['digest']}",
        f"  queues: {item['queues']['pending']} waiting"
        f"{' (' + _join(item['queues']['lanes']) + ')' if item['queues']['lanes'] else ''}; "
        f"running steps: {item['running_steps']}",
        f"  events {counters['events']}; runs: {_join(counters['runs'])}; "
        f"drops: {_join(counters['drops'])}; derived {counters['derived']}; "
        f"loops cut {counters['loops_cut']}; reloads: {_join(counters['reloads'])}",
    ]


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def cmd_history(args: argparse.Namespace) -> int:
    """Print the last events a router handled, with every route's outcome."""
    from eventrouter.cli import commands
    from eventrouter.runtime.identity import instance_name

    query = control.Query(
        "history",
        instance_name(args.instance),
        control.reply_channel(),
        route=args.route,
        event=args.event,
        limit=args.limit,
        verbose=args.verbose,
    )
    answers = _run(args, query, every=False)
    if not answers:
        return commands.EXIT_INVALID
    if "unknown_route" in answers[0]:
        known = ", ".join(str(name) for name in answers[0].get("routes", [])) or "none"
        print(
            escape(
                f"eventrouter history: no route matches {args.route!r} on router "
                f"{answers[0]['instance']!r}; its routes: {known}"
            ),
            file=sys.stderr,
        )
        return commands.EXIT_INVALID
    events = answers[0].get("events", [])
    if args.json:
        print(json.dumps(events, indent=2, ensure_ascii=False))
    elif not events:
        print("no events match" if args.route or args.event else "no events handled yet")
    for event in [] if args.json else events:
        print("\n".join(event_lines(event)))
    return commands.EXIT_OK


def _route_line(trace: dict[str, Any]) -> str:
    text = f"  route {trace['route']}: {trace['outcome']}"
    if "duration" in trace:
        text += f" in {trace['duration']:.3f}s, {trace['steps']} step(s), {trace['status']}"
    if trace.get("detail"):
        text += f": {trace['detail']}"
    return text


def event_lines(event: dict[str, Any]) -> list[str]:
    """Return one event of the history as text."""
    stamp = f"{_clock(event['time'])}.{int(event['time'] * 1000) % 1000:03d}"
    head = f"#{event['seq']}  {stamp}  {event['channel']}"
    if "caused_by" in event:
        head += f"  (derived, caused by #{event['caused_by']})"
    lines = [head]
    if event.get("refused"):
        lines.append(f"  dropped: {event['refused']}")
    if not event["routes"] and not event.get("refused"):
        lines.append("  no route or events folder matched")
    lines += [_route_line(trace) for trace in event["routes"]]
    for item in event.get("derived", []):
        receivers = item.get("receivers")
        heard = f", {receivers} receiver(s)" if receivers is not None else ""
        lines.append(f"  emitted {item['channel']} (route {item['route']}{heard})")
    return lines
