"""Time budget of a template render: a deadline armed by the rendering thread, one watchdog.

Rendering runs on the event loop's thread, so a runaway template (nested loops over payload
lists) would freeze the daemon. Before a render the rendering thread arms a deadline (a dict
update under a lock, no thread hop); one watchdog thread sleeps until the earliest deadline
and, if that render is still armed then, injects ``RenderTimeout`` into the rendering thread
with ``PyThreadState_SetAsyncExc``. ``RenderTimeout`` is a BaseException, so no
``except Exception`` inside Jinja2 can swallow it.

Race-freedom: arming, disarming and the injection all happen under one lock, and an injection
happens at most once per arming. Disarming after an injection clears any exception still
pending for the thread (it lands in a loop that catches it), and the caller raises the
timeout itself, so a late delivery can never land outside the render.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Default time a single render may take, in seconds (``run --template-timeout``).
DEFAULT_TIMEOUT = 1.0


class RenderTimeout(BaseException):
    """Injected into a rendering thread whose deadline passed."""


class BudgetExceeded(Exception):
    """A render ran out of its time budget; the message says which budget."""


@dataclass
class _Armed:
    deadline: float
    fired: bool = False


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
#: Backward jumps that give a pending exception the chance to land (the first one does).
_ABSORB_SPINS = 4


def _inject(thread_id: int, exc: type[BaseException]) -> None:
    """Set the pending asynchronous exception of a thread."""
    _set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def _absorb() -> None:
    """Let a ``RenderTimeout`` still pending for this thread land here, and drop it.

    Not cleared with ``PyThreadState_SetAsyncExc(tid, NULL)``: CPython 3.11 then leaves the
    interpreter's eval breaker set for good (only a delivery resets it), which slows every
    thread from then on, and under a tracer wedges the interpreter. A backward jump checks
    for pending exceptions, so the loop takes the delivery.
    """
    try:
        for _ in range(_ABSORB_SPINS):
            pass
    except RenderTimeout:
        pass


class Watchdog:
    """Aborts renders that outlive their deadline; one thread for the whole process."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        # A plain lock, not a Condition: its ``with`` runs no Python code between taking the
        # lock and entering the block, so a delivery can never leave it held.
        self._lock = threading.Lock()
        self._armed: dict[int, _Armed] = {}
        self._thread: threading.Thread | None = None

    def run(self, render: Callable[[], T]) -> T:
        """Return ``render()``; raise BudgetExceeded when it outlives the timeout."""
        thread_id = threading.get_ident()
        if thread_id in self._armed:  # nested: the outer render's deadline holds
            return render()
        tracer = sys.gettrace()
        if tracer is None:
            return self._run(thread_id, render)
        # Under a tracer (coverage, a debugger) CPython checks for pending exceptions at every
        # instruction, so the injected one could land between taking the lock and entering its
        # block, and leave the lock held: run the budgeted render untraced.
        sys.settrace(None)
        try:
            return self._run(thread_id, render)
        finally:
            sys.settrace(tracer)

    def _run(self, thread_id: int, render: Callable[[], T]) -> T:
        # The outer ``try`` also covers the disarming: a delivery that lands there is ours too.
        try:
            try:
                self._arm(thread_id)
                result = render()
            finally:
                fired = self._disarm(thread_id)
        except RenderTimeout:
            self._disarm(thread_id)  # nothing is pending now: one injection per arming
            raise BudgetExceeded(self._message()) from None
        if fired:
            raise BudgetExceeded(self._message())
        return result

    def _message(self) -> str:
        return f"took longer than {self.timeout:g}s (--template-timeout)"

    def _arm(self, thread_id: int) -> None:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="template-watchdog", daemon=True
                )
                self._thread.start()
            self._armed[thread_id] = _Armed(deadline)

    def _disarm(self, thread_id: int) -> bool:
        """Disarm; return True when the deadline fired (a pending delivery lands here)."""
        with self._lock:
            entry = self._armed.pop(thread_id, None)
            if entry is None or not entry.fired:
                return False
            _absorb()
            return True

    def _watch(self) -> None:
        """Sleep until the earliest deadline; abort the renders still armed past theirs."""
        while True:
            with self._lock:
                now = time.monotonic()
                for thread_id, entry in self._armed.items():
                    if not entry.fired and entry.deadline <= now:
                        entry.fired = True
                        _inject(thread_id, RenderTimeout)
                pending = [entry.deadline for entry in self._armed.values() if not entry.fired]
            # Polling while idle keeps arming free of any wake-up: a render armed during this
            # sleep is aborted at most a quarter of the timeout late.
            idle = min(self.timeout / 4, 0.25)
            time.sleep(max(min(pending, default=now + idle) - now, 0.0001))


WATCHDOG = Watchdog()
