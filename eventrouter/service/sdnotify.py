"""Tell systemd about the daemon's state (``sd_notify``) when ``NOTIFY_SOCKET`` is set."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields to systemd; return False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never wait: this runs on the event loop, and a socket whose queue is full (a
            # manager that does not read; Linux queues 10 datagrams by default) would
            # otherwise stop the router, SIGTERM handling included.
            sock.setblocking(False)
            sock.connect(address)
            sock.send("\n".join(fields).encode())
    except BlockingIOError:
        log.warning("the notify socket %s is full; dropped %s", address, ", ".join(fields))
        return False
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True


def reloading() -> bool:
    """Send RELOADING=1 with the monotonic timestamp systemd expects."""
    stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={stamp}")
