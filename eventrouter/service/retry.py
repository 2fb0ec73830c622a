"""`eventrouter retry` as the router sees it: run a failed route again on its recorded event.

The request arrives on the control channel (``Settings.control_channel``); the daemon hands
it here with the dispatcher and the failure journal.
"""

from __future__ import annotations

import logging

from eventrouter.engine.decide import decide_message, retry_decision
from eventrouter.runtime import history as outcomes
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.runtime.journal import Journal, JournalError, parse_retry_message

#: The daemon's logger, as before these lines moved out of it: the log names their source, and
#: an operator's filter on it must keep finding them.
log = logging.getLogger("eventrouter.service.daemon")


async def retry(dispatcher: Dispatcher, journal: Journal | None, data: bytes, channel: str) -> bool:
    """Run a failed route again on the recorded event, if the current table still would.

    The request and the journal entry are untrusted: whoever can publish on the control
    channel (``channel``) or write the stream could name any route or folder, so the event
    is decided again against the current table and only what that decision fires may run.
    """
    request = parse_retry_message(data)
    if request is None:
        log.warning(
            "ignored a malformed retry request on %s (%d bytes): %r", channel, len(data), data[:100]
        )
        return False
    failure_id, instance = request
    if instance != dispatcher.instance:
        log.debug("retry %s is for router %r, not this one", failure_id, instance[:100])
        return False
    try:
        failure = await journal.get(failure_id) if journal is not None else None
    except JournalError as exc:
        log.error("retry %s: cannot read the failure journal: %s", failure_id, exc)
        return False
    if failure is None:
        log.error("retry %s: no such failure in the journal", failure_id)
        return False
    if failure.payload_cut:
        log.error(
            "retry %s: the journal kept %d of the payload's %d bytes; not retried",
            failure_id,
            len(failure.raw()),
            failure.payload_cut,
        )
        return False
    decision = decide_message(
        dispatcher.index, failure.channel, failure.raw(), dispatcher.current_context()
    )
    found = retry_decision(decision, failure.route, dispatcher.index.routes)
    if isinstance(found, str):
        log.error(
            "retry %s: refused: %r for event %r: %s",
            failure_id,
            failure.route[:200],
            failure.channel[:200],
            found,
        )
        return False
    route = found.route
    log.info(
        "retry %s: running route %s (current version, %s:%d) again on %r",
        failure_id,
        route.name,
        route.file,
        route.line,
        decision.event.channel,
    )
    event = decision.event
    trace = dispatcher.history.start(event.channel, event.raw, dispatcher.generation, ())
    step = trace.add(route.name, outcomes.QUEUED, f"retry {failure_id}")
    return bool(dispatcher.submit(found, event, step))
