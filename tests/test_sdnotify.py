"""sd_notify never blocks the router, even when the manager does not read its socket."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from eventrouter.service import sdnotify


def test_a_full_notify_socket_drops_the_message_instead_of_blocking(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:  # never reads
        manager.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        results: list[bool] = []
        sender = threading.Thread(
            target=lambda: results.extend(sdnotify.notify(f"STATUS={n}") for n in range(100)),
            daemon=True,
        )
        sender.start()
        sender.join(5)
        assert not sender.is_alive(), "notify blocked on a full socket"
        assert results[0] is True and results[-1] is False  # the first went, the last dropped
        assert manager.recv(100) == b"STATUS=0"
