"""Frozen data types shared by the whole package (standard library only)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

#: Event names that may be joined to a handler folder path (README "Handler folders").
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Route names (README "Routes").
ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
#: NS8 agent ids a ``task:`` may name: ``cluster``, ``node/<id>``, ``module/<id>``.
AGENT_ID = re.compile(r"cluster|node/[0-9]+|module/[a-z][a-z0-9_-]*")
#: NS8 action names (the folders of an agent's ``actions/``).
TASK_ACTION = re.compile(r"[a-z0-9-]+")

EVENT_MARK = "/event/"

#: How a route's runs share its lane (docs/routes.md, "Execution options").
Mode = Literal["queued", "parallel", "single", "restart"]
MODES: tuple[Mode, ...] = get_args(Mode)
#: ``schema: strict`` rejects events that do not fit their schema; ``off`` does not check.
SchemaCheck = Literal["strict", "off"]
SCHEMA_CHECKS: tuple[SchemaCheck, ...] = get_args(SchemaCheck)
#: Where a well-known event comes from: its channel's source.
Source = Literal["any", "cluster", "node", "module"]
SOURCES: tuple[Source, ...] = get_args(Source)


def split_channel(channel: str) -> tuple[str | None, str | None]:
    """Split ``<source>/event/<name>`` at the first ``/event/``; (None, None) without it."""
    source, sep, name = channel.partition(EVENT_MARK)
    if not sep:
        return None, None
    return source, name


@dataclass(frozen=True)
class ChainLink:
    """One hop of a derived-event chain: the route that emitted and the channel it emitted on."""

    route: str
    channel: str


@dataclass(frozen=True)
class Event:
    """An event as received: channel, raw payload bytes and, when JSON, the parsed value."""

    channel: str
    raw: bytes
    payload: Any = None
    is_json: bool = False
    chain: tuple[ChainLink, ...] = ()
    # Split once: every event is asked its name and source several times on its way (a
    # cached_property would take a lock at each access on Python 3.11).
    _split: tuple[str | None, str | None] = field(
        init=False, repr=False, compare=False, default=(None, None)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_split", split_channel(self.channel))

    @property
    def source(self) -> str | None:
        """Return what stands before the first ``/event/``, or None."""
        return self._split[0]

    @property
    def name(self) -> str | None:
        """Return what follows the first ``/event/``, or None."""
        return self._split[1]

    @property
    def text(self) -> str:
        """Return the payload as text (invalid UTF-8 replaced)."""
        return self.raw.decode("utf-8", "replace")


class Matcher(Protocol):
    """A compiled channel pattern."""

    text: str
    glob: str

    def match(self, channel: str) -> dict[str, str] | None:
        """Return the captures when ``channel`` matches, else None."""
        ...


class Expression(Protocol):
    """A compiled ``when:`` expression."""

    source: str

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Return the expression's value in ``context``."""
        ...

    def reads(self, name: str) -> bool:
        """Return True when the expression reads the context name ``name``."""
        ...


class TextTemplate(Protocol):
    """A compiled template rendered as text."""

    source: str

    def render(self, context: Mapping[str, Any]) -> str:
        """Return the rendered text."""
        ...


class ValueTemplate(Protocol):
    """A compiled structure of templates rendered to a JSON value."""

    def render(self, context: Mapping[str, Any]) -> Any:
        """Return the rendered value, structure and native types kept."""
        ...

    def fingerprint(self) -> Any:
        """Return what the structure says, hashable, mapping order left out."""
        ...


@dataclass(frozen=True)
class RunAction:
    """Run the steps of a handler directory."""

    path: Path
    line: int
    timeout: float | None = None
    env: tuple[tuple[str, TextTemplate], ...] = ()

    def describe(self) -> str:
        """Return a short human description."""
        return f"run {self.path}"


@dataclass(frozen=True)
class EmitAction:
    """Publish a templated derived event."""

    channel: TextTemplate
    payload: ValueTemplate
    line: int

    def describe(self) -> str:
        """Return a short human description."""
        return f"emit {self.channel.source}"


@dataclass(frozen=True)
class TaskAction:
    """Submit an NS8 task to an agent and, unless ``wait`` is false, wait for its exit code."""

    agent: TextTemplate
    action: str
    data: ValueTemplate
    line: int
    extra: ValueTemplate | None = None
    timeout: float = 3600.0
    wait: bool = True

    def describe(self) -> str:
        """Return a short human description."""
        return f"task {self.action} on {self.agent.source}"


@dataclass(frozen=True)
class ExecAction:
    """Run one command, each argument a template, without a shell, as a step of its own."""

    #: The program as written: a name looked up on PATH, or a path.
    program: str
    args: tuple[TextTemplate, ...]
    line: int
    timeout: float | None = None
    env: tuple[tuple[str, TextTemplate], ...] = ()
    #: The folder of the route file: a relative program path is relative to it.
    base: Path = Path()

    def describe(self) -> str:
        """Return a short human description."""
        return f"exec {self.program}"

    def resolve(self) -> str | None:
        """Return the program's path when it names one (absolute here), None for a bare name."""
        if "/" not in self.program:
            return None
        return os.path.normpath(os.path.join(self.base, self.program))


Action = RunAction | EmitAction | TaskAction | ExecAction


@dataclass(frozen=True)
class RouterInfo:
    """Where a router runs: templates see it as ``router`` (docs/cluster.md)."""

    #: The node id: a number when it is one (as in NS8 payloads), else text; None: unknown.
    node: int | str | None = None
    agent: str | None = None
    instance: str = ""
    #: Whether the Redis this router subscribes to is the master.
    leader: bool = True

    def template_value(self) -> dict[str, Any]:
        """Return the ``router`` object of the template context."""
        return {
            "node": self.node,
            "agent": self.agent,
            "instance": self.instance,
            "leader": self.leader,
        }


#: Where a router runs when nothing says otherwise: the leader of a one-node cluster.
ONE_NODE = RouterInfo()


@dataclass(frozen=True)
class TaskResult:
    """How a task ended: its id, exit code, output and error text (None: not waited for)."""

    task_id: str
    exit_code: int | None
    output: str = ""
    error: str = ""

    def describe(self) -> str:
        """Return the exit code with NS8's meaning of it, for the log."""
        if self.exit_code is None:
            return "submitted"
        meaning = TASK_EXIT_MEANINGS.get(self.exit_code)
        return f"exit code {self.exit_code}" + (f" ({meaning})" if meaning else "")


#: Exit codes with a meaning of their own in NS8.
TASK_EXIT_MEANINGS = {8: "no such action", 10: "validation failed", 11: "agent busy"}


@dataclass(frozen=True)
class RetryPolicy:
    """How failed ``run:`` actions are retried: attempts in all, exponential backoff."""

    attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 30.0

    def delay(self, attempt: int) -> float:
        """Return the base delay after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Route:
    """A validated route: patterns, an optional condition and actions."""

    name: str
    patterns: tuple[Matcher, ...]
    actions: tuple[Action, ...]
    file: str
    line: int
    when: Expression | None = None
    description: str = ""
    enabled: bool = True
    mode: Mode = "queued"
    #: Runs at once per key in ``parallel`` mode.
    max_runs: int = 1
    #: Template naming the lane: the mode, debounce and throttle apply per key.
    key: TextTemplate | None = None
    debounce: float | None = None
    throttle: float | None = None
    retry: RetryPolicy | None = None
    schema: SchemaCheck = "off"
    convention: bool = False
    #: Where the route acts: ``all`` (None), ``leader``, or a template naming a node.
    runs_on: TextTemplate | None = None
    #: ``schema: strict``: returns why an event does not fit its schema, or None.
    payload_check: Callable[[Event], str | None] | None = field(default=None, compare=False)

    @cached_property
    def fingerprint(self) -> tuple[Any, ...]:
        """Return what the route does, hashable: equal fingerprints, same behaviour.

        Leaves out the name, the place and the spelling (key order, flow style), and what
        does not change behaviour (description, enabled); computed on first use, not at load.
        Kept once computed: only the deep check asks for it. What the running router needs
        of it (``reads_env``, ``digest``) is computed from a copy that is not kept, since the
        fingerprints of 10,000 routes held about 10 MiB.
        """
        return _fingerprint(self)

    def reads_env(self) -> bool:
        """Return True when the route may read the module's environment as it runs.

        ``env`` named in any of its templates (told from the fingerprint's text: a name that
        merely holds the letters, a folder ``envbad``, counts too), or an ``exec:``, whose
        program is looked up on that environment's PATH. A table none of whose routes does
        need not look at the environment file for each event.
        """
        return self._reads_env

    @cached_property
    def _reads_env(self) -> bool:
        if any(isinstance(action, ExecAction) for action in self.actions):
            return True
        return "env" in repr(self.__dict__.get("fingerprint") or _fingerprint(self))

    @cached_property
    def digest(self) -> str:
        """Return a hash of the fingerprint, description and enabled flag, for reloads."""
        fingerprint = self.__dict__.get("fingerprint") or _fingerprint(self)
        what = (fingerprint, self.description, self.enabled)
        return hashlib.sha256(repr(what).encode()).hexdigest()

    def match(self, channel: str) -> dict[str, str] | None:
        """Return the captures of the first pattern matching ``channel``, else None."""
        for pattern in self.patterns:
            captures = pattern.match(channel)
            if captures is not None:
                return captures
        return None


def _fingerprint(route: Route) -> tuple[Any, ...]:
    actions = tuple(_action_fingerprint(a) for a in route.actions)
    return (
        tuple(pattern.text for pattern in route.patterns),
        route.when.source if route.when is not None else None,
        route.key.source if route.key is not None else None,
        route.mode, route.max_runs, route.debounce, route.throttle, route.retry, route.schema,
        actions, route.runs_on.source if route.runs_on is not None else None,
    )  # fmt: skip


def _action_fingerprint(action: Action) -> tuple[Any, ...]:
    if isinstance(action, RunAction):
        env = tuple((key, template.source) for key, template in action.env)
        return ("run", str(action.path), action.timeout, env)
    if isinstance(action, EmitAction):
        return ("emit", action.channel.source, action.payload.fingerprint())
    if isinstance(action, ExecAction):
        env = tuple((key, template.source) for key, template in action.env)
        args = tuple(template.source for template in action.args)
        return ("exec", action.resolve() or action.program, args, action.timeout, env)
    extra = action.extra.fingerprint() if action.extra is not None else None
    return (
        "task", action.agent.source, action.action, action.data.fingerprint(), extra,
        action.timeout, action.wait,
    )  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Daemon settings, from the command line and the environment.

    Each default here is also the default of the `run` option that sets the field
    (``cli/options.py`` reads it from here).
    """

    routes_dirs: tuple[Path, ...] = ()
    events_dirs: tuple[Path, ...] = ()
    redis_url: str | None = None
    publish_url: str | None = None
    step_timeout: float | None = None
    stop_timeout: float = 30.0
    kill_grace: float = 5.0
    max_concurrency: int = 32
    max_payload: int = 1024 * 1024
    max_depth: int = 8
    queue_limit: int = 10_000
    state_dir: Path | None = None
    #: Redis stream of failed runs, and how many entries it keeps (approximately).
    journal_key: str = "eventrouter/failures"
    journal_size: int = 10_000
    #: This router's name in the journal (default: the host name); retries go to it.
    instance: str = ""
    #: Channel on which `eventrouter retry` asks the routers to run a failed route again.
    control_channel: str = "eventrouter/control/retry"
    #: Runs waiting in all the queues together before new ones are dropped with an error.
    max_pending: int = 100_000
    #: Health check of the subscription: PING after this long quiet, reconnect without reply.
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    #: Longest time one template render may take before it is aborted, in seconds.
    template_timeout: float = 1.0
    #: Payload bytes of the runs waiting in all the queues together (--max-queued-bytes).
    max_queued_bytes: int = 64 * 1024 * 1024
    #: Payload bytes a failure journal entry keeps (--journal-payload); the rest is cut.
    journal_payload: int = 64 * 1024
    #: This router's node and agent (docs/cluster.md): --node / --agent, else environment.
    node: str | None = None
    agent: str | None = None
    #: How often the role of the subscribe server is read (leader or not).
    role_interval: float = 2.0
    #: Reload when a route file is created, changed, replaced or removed (--watch).
    watch: bool = False
