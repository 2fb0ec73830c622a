"""`eventrouter publish`: check an event and publish it, saying when its channel is no event's."""

from __future__ import annotations

import argparse
import sys

from eventrouter.cli import elsewhere
from eventrouter.cli.commands import EXIT_INVALID, EXIT_OK, _load, _payload, _state_dir, _write_url
from eventrouter.cli.logs import escape
from eventrouter.errors import PayloadError
from eventrouter.model import SAFE_NAME, split_channel


def channel_warning(channel: str) -> str | None:
    """Return why ``channel`` is not ``<source>/event/<name>``, or None when it is one.

    Routes and events folders are written for event channels: a message elsewhere is heard
    by nobody, and `publish` would otherwise say "0 receiver(s)" and exit 0.
    """
    source, name = split_channel(channel)
    if source and name:
        return None
    meant = ""
    if source is None and "/" in channel.strip("/"):
        head, _, tail = channel.strip("/").rpartition("/")
        if SAFE_NAME.fullmatch(tail):
            meant = f" (did you mean {head}/event/{tail}?)"
    missing = "no /event/" if source is None else "no source" if not source else "no name"
    return (
        f"warning: {channel!r} is not an event channel <source>/event/<name> ({missing}): "
        f"routes and events folders listen to event channels only{meant}"
    )


def cmd_publish(args: argparse.Namespace) -> int:
    """Check and publish one event; print how many subscribers received it."""
    import asyncio

    from eventrouter.config import payloads
    from eventrouter.redis import bus, embedded

    data = _payload(args.payload)
    if not args.raw:
        loaded, _ = _load(args)  # the operators' own event schemas, when the routes load
        declared = loaded.schemas if loaded.ok else None
        try:
            payloads.check_payload(args.channel, data.decode("utf-8"), declared)
        except (PayloadError, UnicodeDecodeError) as exc:
            print(f"eventrouter publish: {exc} (use --raw to publish it anyway)", file=sys.stderr)
            return EXIT_INVALID
    try:
        url = _write_url(args)
    except ValueError as exc:  # an unreadable password file
        print(f"eventrouter publish: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if url is None:
        socket = embedded.socket_path(_state_dir(args))
        print(
            f"eventrouter publish: no Redis configured and no embedded server answers at "
            f"{socket}; start `eventrouter run` first or pass --redis URL{elsewhere.hint(socket)}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        receivers = asyncio.run(bus.publish_once(url, args.channel, data))
    except ConnectionError as exc:
        print(f"eventrouter publish: {exc}", file=sys.stderr)
        return EXIT_INVALID
    # Redis counts one receiver per matching pattern of each subscribed client.
    print(escape(f"published {args.channel}: {receivers} receiver(s)"))
    warning = channel_warning(args.channel)
    if warning is not None:
        print(f"eventrouter publish: {escape(warning)}", file=sys.stderr)
    return EXIT_OK
