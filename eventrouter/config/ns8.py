"""NS8 helpers for templates: the rules of NS8's agent library that a plain expression cannot say.

Each helper mirrors one function of the NS8 agent's Python library (``agent`` package of
ns8-core), so that a route decides as the module's own handler would; the facts it keeps are
written beside it. They are Jinja tests, registered in the sandbox (``sandbox.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.exceptions import UndefinedError
from jinja2.runtime import Context

#: The node a helper defaults to: ``env.NODE_ID``, as the agent library reads ``NODE_ID``.
_NO_NODE = object()


def _text(value: Any, what: str) -> str:
    """Return ``value`` as text; an undefined value fails as any undefined name does."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"certificate_for: {what} must be text, got {type(value).__name__}")
    return str(value)


def _node_of(context: Context, node: Any) -> str:
    if node is not _NO_NODE:
        return _text(node, "the node")
    env = context.get("env")
    if not isinstance(env, Mapping) or "NODE_ID" not in env:
        raise UndefinedError(
            "certificate_for: env.NODE_ID is undefined; give the node: "
            "certificate_for(hostname, router.node)"
        )
    return str(env["NODE_ID"])


@jinja2.pass_context
def certificate_for(context: Context, event: Any, hostname: Any, node: Any = _NO_NODE) -> bool:
    """Return True when a ``certificate-changed`` payload concerns ``hostname`` on this node.

    Mirrors ``certificate_event_matches(event, hostname)`` of the NS8 agent library, which
    the ``certificate-changed`` handlers of ns8-mail (``POSTFIX_HOSTNAME``), ns8-ejabberd
    (``EJABBERD_HOSTNAME``) and ns8-samba (``HOSTNAME``) call first. The facts it keeps:

    * traefik publishes ``{"node_id": <int>, "module_id": ..., "names": [<dns name>...]}`` on
      ``module/<traefik>/event/certificate-changed``;
    * the certificate is for this module when the event's ``node_id`` is this node (the
      library reads ``NODE_ID`` from the environment; here ``env.NODE_ID``, or ``node``) and
      ``names`` holds the hostname itself, or the wildcard ``*.`` + the hostname's domain part
      (what follows its first dot): ``mail.example.org`` matches ``*.example.org``.

    The node is compared as text (the payload carries a number, the environment text). A
    payload that is not a mapping, or lacks ``node_id`` or a list of ``names``, is no
    certificate for anyone: false, where the library's handler would stop with an exception.
    """
    name = _text(hostname, "the hostname")
    mine = _node_of(context, node)
    if not isinstance(event, Mapping):
        return False
    names = event.get("names")
    if "node_id" not in event or not isinstance(names, list):
        return False
    if str(event["node_id"]) != mine or not name:
        return False
    _, dot, domain = name.partition(".")
    return name in names or (bool(dot) and f"*.{domain}" in names)


#: The Jinja tests this module adds to route templates.
TESTS = {"certificate_for": certificate_for}
