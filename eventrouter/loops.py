"""Derived-event loops: Redis glob intersection, the emit graph and its elementary cycles.

A channel pattern or an emitted channel is turned into a ``Glob``: a sequence of tokens, each
one character out of a set, or any number of them (a star). Two globs overlap when some
channel matches both; that is reachability in the product of the two automata, a few hundred
states at most. Globs are indexed by their literal first and last path segments, so matching
every emit against every route stays close to linear in the number of routes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

from eventrouter.errors import Diagnostic
from eventrouter.model import Route

T = TypeVar("T")
Ranges = tuple[tuple[str, str], ...]
#: How many cycles are listed; past it, one more finding says that others exist.
MAX_CYCLES = 50


@dataclass(frozen=True)
class Token:
    """One character out of a set (``negated``: any character outside ``ranges``), or a star."""

    negated: bool
    ranges: Ranges
    star: bool = False

    @property
    def char(self) -> str | None:
        """Return the one character this token stands for, or None."""
        if self.star or self.negated or len(self.ranges) != 1:
            return None
        low, high = self.ranges[0]
        return low if low == high else None


ANY = Token(True, ())
STAR = Token(True, (), star=True)
#: A ``{capture}`` is one path segment: one non-``/`` character, then any number of them.
SEGMENT = (Token(True, (("/", "/"),)), Token(True, (("/", "/"),), star=True))


def _literal(char: str) -> Token:
    return Token(False, ((char, char),))


@dataclass(frozen=True)
class Glob:
    """A channel pattern or emitted channel as tokens, with its literal first and last segment."""

    text: str
    tokens: tuple[Token, ...]

    @cached_property
    def literal(self) -> str | None:
        """Return the one channel this glob matches, or None."""
        chars = [token.char for token in self.tokens]
        return None if None in chars else "".join(c for c in chars if c is not None)

    @cached_property
    def head(self) -> str | None:
        """Return the first path segment every matching channel has, or None."""
        return _segment(self.tokens)

    @cached_property
    def tail(self) -> str | None:
        """Return the last path segment every matching channel has, or None."""
        found = _segment(self.tokens[::-1])
        return None if found is None else found[::-1]


def _segment(tokens: Sequence[Token]) -> str | None:
    chars: list[str] = []
    for token in tokens:
        char = token.char
        if char is None:
            return None
        if char == "/":
            break
        chars.append(char)
    return "".join(chars)


def _char_class(text: str, start: int) -> tuple[Token, int]:
    """Read the ``[...]`` class at ``start`` (already validated); return it and the next index."""
    i = start + 1
    negated = i < len(text) and text[i] == "^"
    i += negated
    ranges: list[tuple[str, str]] = []
    while i < len(text) and text[i] != "]":
        if text[i] == "\\" and i + 1 < len(text):
            ranges.append((text[i + 1], text[i + 1]))
            i += 2
        elif i + 2 < len(text) and text[i + 1] == "-" and text[i + 2] != "]":
            low, high = sorted((text[i], text[i + 2]))  # Redis accepts reversed ranges
            ranges.append((low, high))
            i += 3
        else:
            ranges.append((text[i], text[i]))
            i += 1
    return Token(negated, tuple(ranges)), i + 1


def pattern_glob(text: str) -> Glob:
    """Return the glob of a route's channel pattern (``{name}`` is one path segment)."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "{":
            tokens.extend(SEGMENT)
            i = text.index("}", i) + 1
            continue
        if char == "[":
            token, i = _char_class(text, i)
            tokens.append(token)
            continue
        if char == "\\" and i + 1 < len(text):
            tokens.append(_literal(text[i + 1]))
            i += 2
            continue
        tokens.append(STAR if char == "*" else ANY if char == "?" else _literal(char))
        i += 1
    return Glob(text, tuple(tokens))


def channel_glob(text: str, parts: Sequence[str | None]) -> Glob:
    """Return the glob of an emitted channel: literal parts, and None for each template part."""
    tokens: list[Token] = []
    for part in parts:
        if part is None:
            if not tokens or tokens[-1] != STAR:
                tokens.append(STAR)
        else:
            tokens.extend(_literal(char) for char in part)
    return Glob(text, tuple(tokens))


def _uncovered(low: str, high: str, holes: Ranges) -> bool:
    """Return True when some character of ``low``-``high`` lies outside every hole."""
    point = ord(low)
    for hole_low, hole_high in sorted(holes):
        if ord(hole_low) > point:
            break
        point = max(point, ord(hole_high) + 1)
    return point <= ord(high)


def _meet(a: Token, b: Token) -> bool:
    """Return True when some character is allowed by both tokens."""
    if a.negated and b.negated:
        return True  # two finite exclusions never cover every character
    if not a.negated and not b.negated:
        return any(
            low <= other_high and other_low <= high
            for low, high in a.ranges
            for other_low, other_high in b.ranges
        )
    positive, negative = (a, b) if b.negated else (b, a)
    return any(_uncovered(low, high, negative.ranges) for low, high in positive.ranges)


def overlap(a: Glob, b: Glob) -> bool:
    """Return True when some channel matches both globs."""
    left, right = a.literal, b.literal
    if left is not None and right is not None:
        return left == right
    x, y = a.tokens, b.tokens
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == len(x) and j == len(y):
            return True
        one = x[i] if i < len(x) else None
        two = y[j] if j < len(y) else None
        if one is not None and one.star:
            stack.append((i + 1, j))  # the star matches nothing more
        if two is not None and two.star:
            stack.append((i, j + 1))
        if one is not None and two is not None and _meet(one, two) and not (one.star and two.star):
            stack.append((i if one.star else i + 1, j if two.star else j + 1))
    return False


class GlobIndex(Generic[T]):
    """Find the items whose globs overlap a glob, testing only those with compatible segments."""

    def __init__(self) -> None:
        self._pair: dict[tuple[str | None, str | None], list[tuple[Glob, T]]] = defaultdict(list)
        self._head: dict[str | None, list[tuple[Glob, T]]] = defaultdict(list)
        self._tail: dict[str | None, list[tuple[Glob, T]]] = defaultdict(list)
        self._all: list[tuple[Glob, T]] = []

    def add(self, glob: Glob, item: T) -> None:
        """Index ``item`` under ``glob``."""
        entry = (glob, item)
        head, tail = glob.head, glob.tail
        self._pair[head, tail].append(entry)
        self._head[head].append(entry)
        self._tail[tail].append(entry)
        self._all.append(entry)

    def _candidates(self, glob: Glob) -> Iterator[tuple[Glob, T]]:
        head, tail = glob.head, glob.tail
        if head is not None and tail is not None:
            for key in {(head, tail), (head, None), (None, tail), (None, None)}:
                yield from self._pair.get(key, ())
        elif head is not None:
            yield from self._head.get(head, ())
            yield from self._head.get(None, ())
        elif tail is not None:
            yield from self._tail.get(tail, ())
            yield from self._tail.get(None, ())
        else:
            yield from self._all

    def overlapping(self, glob: Glob) -> Iterator[tuple[Glob, T]]:
        """Yield each (glob, item) whose glob overlaps ``glob``."""
        for entry in self._candidates(glob):
            if overlap(glob, entry[0]):
                yield entry


Graph = dict[int, dict[int, str]]  # route -> route it triggers -> the emitted channel


def emit_graph(routes: Sequence[Route], emits: Sequence[Sequence[Glob]]) -> Graph:
    """Return, for each route, the routes one of its emitted channels can match."""
    index: GlobIndex[int] = GlobIndex()
    for number, route in enumerate(routes):
        if route.enabled:
            for pattern in route.patterns:
                index.add(pattern_glob(pattern.text), number)
    graph: Graph = {}
    for number, globs in enumerate(emits):
        if not routes[number].enabled:
            continue
        edges: dict[int, str] = {}
        for glob in globs:
            for _, target in index.overlapping(glob):
                edges.setdefault(target, glob.text)
        if edges:
            graph[number] = edges
    return graph


def _components(nodes: Sequence[int], graph: Graph) -> list[list[int]]:
    """Return the strongly connected components of ``graph`` restricted to ``nodes`` (Tarjan)."""
    allowed = set(nodes)
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    found: list[list[int]] = []
    for root in nodes:
        if root in order:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next((t for t in targets if t in allowed), None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == order[node]:
                    component: list[int] = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    found.append(sorted(component))
            elif target not in order:
                order[target] = low[target] = len(order)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph.get(target, {})))))
            elif target in on_stack:
                low[node] = min(low[node], order[target])
    return found


def _unblock(node: int, blocked: set[int], waiting: dict[int, set[int]]) -> None:
    pending = {node}
    while pending:
        item = pending.pop()
        if item in blocked:
            blocked.discard(item)
            pending.update(waiting.pop(item, set()))


def _cycles_through(start: int, members: set[int], graph: Graph) -> Iterator[list[int]]:
    """Yield the elementary cycles through ``start`` within ``members`` (Johnson, iterative)."""

    def targets(node: int) -> list[int]:
        return [t for t in sorted(graph.get(node, {}), reverse=True) if t in members]

    path, blocked, closed = [start], {start}, set()
    waiting: dict[int, set[int]] = defaultdict(set)
    stack = [(start, targets(start))]
    while stack:
        node, pending = stack[-1]
        if pending:
            target = pending.pop()
            if target == start:
                yield list(path)
                closed.update(path)
            elif target not in blocked:
                path.append(target)
                stack.append((target, targets(target)))
                closed.discard(target)
                blocked.add(target)
                continue
        if not pending:
            if node in closed:
                _unblock(node, blocked, waiting)
            else:
                for target in targets(node):
                    waiting[target].add(node)
            stack.pop()
            path.pop()


def elementary_cycles(graph: Graph, limit: int = MAX_CYCLES) -> tuple[list[list[int]], bool]:
    """Return up to ``limit`` elementary cycles (lowest node first) and whether more exist."""
    cycles = [[node] for node in sorted(graph) if node in graph[node]]
    pending = [c for c in _components(sorted(graph), graph) if len(c) > 1]
    while pending and len(cycles) <= limit:
        component = pending.pop(0)
        start, rest = component[0], component[1:]
        members = set(component)
        for cycle in _cycles_through(start, members, graph):
            if len(cycle) > 1:
                cycles.append(cycle)
            if len(cycles) > limit:
                break
        pending.extend(c for c in _components(rest, graph) if len(c) > 1)
    cycles.sort(key=lambda cycle: (len(cycle), cycle))
    return cycles[:limit], len(cycles) > limit


def cycle_findings(
    routes: Sequence[Route], graph: Graph, can_stop: Sequence[bool]
) -> list[Diagnostic]:
    """Report every derived-event cycle: an error, or a warning when each route has a when:."""
    cycles, more = elementary_cycles(graph)
    findings: list[Diagnostic] = []
    for cycle in cycles:
        hops = [
            f"{routes[node].name} ({routes[node].file}:{routes[node].line}) emits "
            f"{graph[node][cycle[(k + 1) % len(cycle)]]}"
            for k, node in enumerate(cycle)
        ]
        first = routes[cycle[0]]
        text = f"derived-event cycle: {' -> '.join(hops)} -> {first.name}"
        if all(can_stop[node] for node in cycle):
            note = "every route on it has a when: condition that can stop it"
            findings.append(Diagnostic(first.file, first.line, "warning", f"{text} ({note})"))
        else:
            names = ", ".join(routes[node].name for node in cycle if not can_stop[node])
            note = f"no when: condition can stop it at {names}; only the runtime loop guard will"
            findings.append(Diagnostic(first.file, first.line, "error", f"{text} ({note})"))
    if more:
        first = routes[cycles[-1][0]]
        message = f"more than {MAX_CYCLES} derived-event cycles; only the first are listed"
        findings.append(Diagnostic(first.file, first.line, "error", message))
    return findings
