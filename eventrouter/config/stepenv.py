"""``env`` in templates: what a step started for an event finds in its environment.

The caller (the daemon, ``explain``, ``test``) gives the router's environment with the module's
environment file over it; the event's own variables are added here, as the step runner adds
them. It is about the environment, not Jinja2, hence apart from ``templates``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from eventrouter.model import Event

#: ``env`` of recent events, by (base mapping, source, name): a context is built for each route
#: an event matches, and the base holds every variable of the router's environment.
_STEP_ENVS: OrderedDict[tuple[int, str, str], tuple[Mapping[str, str], dict[str, str]]] = (
    OrderedDict()
)
_STEP_ENVS_MAX = 256
_NO_ENV: Mapping[str, str] = {}


def step_env(event: Event, env: Mapping[str, str] | None) -> dict[str, str]:
    """Return ``env`` in templates: what a step started for ``event`` finds in its environment.

    ``env`` is the router's environment with the module's environment file over it; the
    step runner then adds the action's ``env`` and the event's own variables, as here. The
    result is shared between the contexts of one event (the sandbox cannot change it).
    """
    base = env if env is not None else _NO_ENV
    key = (id(base), event.source or "", event.name or "")
    found = _STEP_ENVS.get(key)
    if found is not None and found[0] is base:
        _STEP_ENVS.move_to_end(key)
        return found[1]
    merged = {
        **base,
        "AGENT_EVENT_NAME": event.name or "",
        "AGENT_EVENT_SOURCE": event.source or "",
        "AGENT_COMFD": "2",
    }
    _STEP_ENVS[key] = (base, merged)  # the base kept alive: its id names no other mapping
    if len(_STEP_ENVS) > _STEP_ENVS_MAX:
        _STEP_ENVS.popitem(last=False)
    return merged
