"""What to add when no embedded server answers where a command looks: one that answers here.

`make run` keeps its state in the checkout's ``.state/`` (Makefile ``RUN_STATE_DIR``), not in
the default folder the other commands look in. They are pointed at it explicitly
(``EVENTROUTER_STATE_DIR`` or ``--state-dir``), never by guessing from the current folder:
a command run as root must not start talking to whatever server a folder it stands in holds.
So when nothing answers where they look but a server answers in ``./.state``, the error says
how to point them there.
"""

from __future__ import annotations

from pathlib import Path

from eventrouter.redis import embedded

#: Where `make run` keeps its state, relative to the checkout it runs from.
CHECKOUT_STATE = Path(".state")


def hint(looked_at: Path) -> str:
    """Return "; ..." naming ./.state when a server answers there and not at ``looked_at``."""
    here = embedded.socket_path(CHECKOUT_STATE)
    if here.absolute() == looked_at.absolute() or not embedded.ping(here):
        return ""
    return (
        f"; an embedded server answers at {here} (where `make run` keeps its state): "
        "export EVENTROUTER_STATE_DIR=$PWD/.state, or pass --state-dir .state"
    )
