"""Derived-event loops: Redis glob intersection, the emit graph and its elementary cycles.

A channel pattern or an emitted channel is turned into a ``Glob``: a sequence of tokens, each
one character out of a set, or any number of them (a star). Two globs overlap when some
channel matches both; that is reachability in the product of the two automata, a few hundred
states at most. Globs are indexed by their literal prefix and suffix, so matching every emit
against every route stays close to linear in the number of routes.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from eventrouter.config.patterns import tokenize
from eventrouter.model import Route

T = TypeVar("T")
Ranges = tuple[tuple[str, str], ...]
#: How many cycles are listed; past it, one more finding says that others exist.
MAX_CYCLES = 50
#: How many characters of a literal prefix or suffix the index keys on.
AFFIX = 16


@dataclass(frozen=True)
class Token:
    """One character out of a set (``negated``: any character outside ``ranges``), or a star."""

    negated: bool
    ranges: Ranges
    star: bool = False
    char: str | None = None  # the one character a literal token stands for


ANY = Token(True, ())
STAR = Token(True, (), star=True)
#: A ``{capture}`` is one path segment: one non-``/`` character, then any number of them.
SEGMENT = (Token(True, (("/", "/"),)), Token(True, (("/", "/"),), star=True))
_LITERALS: dict[str, Token] = {}


def _literal(char: str) -> Token:
    token = _LITERALS.get(char)
    if token is None:
        token = _LITERALS[char] = Token(False, ((char, char),), char=char)
    return token


@dataclass(frozen=True)
class Glob:
    """A channel pattern or emitted channel as tokens, with its literal ends."""

    text: str
    tokens: tuple[Token, ...]
    prefix: str  # every matching channel starts with it
    suffix: str  # ... and ends with it
    literal: bool  # it matches exactly one channel: ``prefix``
    simple: bool  # it has only literal characters and plain stars
    chars: str  # the tokens as text, NUL for a wildcard
    runs: tuple[int, ...]  # the length of the literal run starting at each token


def _glob(text: str, tokens: tuple[Token, ...], chars: str) -> Glob:
    wild, at = [], chars.find("\0")
    while at >= 0:  # a literal NUL counts as a wildcard here: the ends and runs stay true
        wild.append(at)
        at = chars.find("\0", at + 1)
    if not wild:
        runs = tuple(range(len(tokens), -1, -1))
        return Glob(text, tokens, chars, chars, True, False, chars, runs)
    prefix, suffix = chars[: wild[0]], chars[wild[-1] + 1 :]
    simple = all(tokens[i] is STAR for i in wild)
    counts: list[int] = []
    start = 0
    for stop in [*wild, len(tokens)]:
        counts += [*range(stop - start, 0, -1), 0]  # a literal run, then the wildcard
        start = stop + 1
    return Glob(text, tokens, prefix, suffix, False, simple, chars, tuple(counts))


@lru_cache(maxsize=65536)
def pattern_glob(text: str) -> Glob:
    """Return the glob of a route's channel pattern (``{name}`` is one path segment)."""
    tokens: list[Token] = []
    chars: list[str] = []  # the tokens as text, NUL for a wildcard
    for piece in tokenize(text):
        if piece.kind == "literal":
            tokens += [_LITERALS.get(char) or _literal(char) for char in piece.text]
            chars.append(piece.text)
            continue
        wild: Sequence[Token]
        if piece.kind == "capture":
            wild = SEGMENT
        elif piece.kind == "class":
            wild = (Token(piece.negated, piece.ranges),)
        else:
            wild = (STAR if piece.kind == "star" else ANY,)
        tokens += wild
        chars.append("\0" * len(wild))
    return _glob(text, tuple(tokens), "".join(chars))


def channel_glob(text: str, parts: Sequence[str | Sequence[Token]]) -> Glob:
    """Return the glob of an emitted channel: literal parts, and tokens for template parts."""
    tokens: list[Token] = []
    chars: list[str] = []
    for part in parts:
        if isinstance(part, str):
            tokens += [_LITERALS.get(char) or _literal(char) for char in part]
            chars.append(part)
        elif not (tokens and tokens[-1] is STAR and len(part) == 1 and part[0] is STAR):
            tokens += part
            chars.append("".join(token.char or "\0" for token in part))
    return _glob(text, tuple(tokens), "".join(chars))


def contains(glob: Glob, text: str) -> bool:
    """Return True when every channel ``glob`` matches holds ``text`` (literally in the glob)."""
    return text in glob.chars


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
    if a.char is not None and b.char is not None:
        return a.char == b.char
    if a.char is not None or b.char is not None:
        char, other = (a.char, b) if a.char is not None else (b.char, a)
        assert char is not None
        inside = any(low <= char <= high for low, high in other.ranges)
        return inside != other.negated
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


def _ends_fit(a: Glob, b: Glob) -> bool:
    """Return False when the literal ends of two globs already disagree."""
    one, two = a.prefix, b.prefix
    if not (one.startswith(two) if len(one) >= len(two) else two.startswith(one)):
        return False
    one, two = a.suffix, b.suffix
    return one.endswith(two) if len(one) >= len(two) else two.endswith(one)


def overlap(a: Glob, b: Glob) -> bool:
    """Return True when some channel matches both globs."""
    if a.literal and b.literal:
        return a.prefix == b.prefix
    if a.literal and len(a.prefix) < len(b.prefix) + len(b.suffix):
        return False  # b needs its prefix and its suffix, apart
    if b.literal and len(b.prefix) < len(a.prefix) + len(a.suffix):
        return False
    if not _ends_fit(a, b):
        return False
    if a.simple and b.simple:
        # P0*...*Pn and Q0*...*Qm with agreeing ends both match max(P0, Q0) + P1...P(n-1) +
        # Q1...Q(m-1) + max(Pn, Qm): what lies between the ends is eaten by the other's stars.
        return True
    # The literal ends agree: search the product of what lies between them.
    start = min(len(a.prefix), len(b.prefix))
    end = min(len(a.suffix), len(b.suffix))
    return _product_accepts(a, b, start, end)


def _star_stops(
    star: Glob, i: int, stop: int, *, text: Glob, j: int, end: int
) -> tuple[list[int], int]:
    """Return where the star ``star.tokens[i]`` can stop inside the literal run of ``text`` at
    ``j`` (``stop``, ``end``: where each side's tokens end), and the run's end when the star
    can eat the whole run (else -1)."""
    token = star.tokens[i]
    run_end = j + min(text.runs[j], end - j)
    limit = run_end  # the star eats text.chars[j:limit] at most
    if token.ranges == (("/", "/"),):  # a capture's star
        found = text.chars.find("/", j, run_end)
        limit = run_end if found < 0 else found
    elif token.ranges:
        limit = next((p for p in range(j, run_end) if not _meet(token, text.tokens[p])), run_end)
    last = min(limit, run_end - 1)
    after = star.tokens[i + 1].char if i + 1 < stop else ""
    if after == "":  # nothing follows the star: it cannot stop before the text ends
        stops = []
    elif after is None:  # a wildcard follows the star: it may face any character
        stops = list(range(j, last + 1))
    else:  # a literal follows the star: only where the text has that character
        stops = [p for p in range(j, last + 1) if text.chars[p] == after]
    return stops, run_end if limit == run_end else -1


def _product_accepts(a: Glob, b: Glob, start: int, end: int) -> bool:
    """Return True when some text matches both globs from token ``start`` to ``end`` before
    the end (a depth-first search of the product automaton, each state an int)."""
    x, y = a.tokens, b.tokens
    n, m = len(x) - end, len(y) - end
    width = m + 1  # state i * width + j: x[i:n] and y[j:m] remain to match
    seen: set[int] = set()
    stack = [start * width + start]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = divmod(state, width)
        if i == n and j == m:
            return True
        one = x[i] if i < n else None
        two = y[j] if j < m else None
        if one is not None and one.star and two is not None and b.runs[j]:
            # A star facing a literal run: jump to where it can stop, all at once.
            stops, whole = _star_stops(a, i, n, text=b, j=j, end=m)
            stack += [(i + 1) * width + p for p in stops]
            stack += [(i + 1) * width + whole, i * width + whole] if whole >= 0 else []
            continue
        if two is not None and two.star and one is not None and a.runs[i]:
            stops, whole = _star_stops(b, j, m, text=a, j=i, end=n)
            stack += [p * width + j + 1 for p in stops]
            stack += [whole * width + j + 1, whole * width + j] if whole >= 0 else []
            continue
        step = min(a.runs[i], b.runs[j], n - i, m - j)
        if step:  # two literal runs: compare them at once
            if a.chars[i : i + step] == b.chars[j : j + step]:
                stack.append(state + step * width + step)
            continue
        if one is not None and one.star:
            stack.append(state + width)  # the star matches nothing more
        if two is not None and two.star:
            stack.append(state + 1)
        if one is not None and two is not None and not (one.star and two.star) and _meet(one, two):
            stack.append(state + (0 if one.star else width) + (0 if two.star else 1))
    return False


class _Affixes(Generic[T]):
    """Entries by the first ``AFFIX`` characters of a literal text (a prefix, or a reversed
    suffix): two entries can only overlap when one such text starts the other."""

    def __init__(self) -> None:
        self._by_text: dict[str, list[T]] = {}
        self._texts: list[str] = []  # the keys of _by_text, sorted
        self._sizes: set[int] = set()  # their lengths

    def add(self, text: str, entry: T) -> None:
        """File ``entry`` under the start of ``text``."""
        key = text[:AFFIX]
        found = self._by_text.get(key)
        if found is None:
            found = self._by_text[key] = []
            bisect.insort(self._texts, key)
            self._sizes.add(len(key))
        found.append(entry)

    def buckets(self, text: str) -> Iterator[list[T]]:
        """Yield the entries whose text starts ``text``, or that ``text`` starts."""
        key = text[:AFFIX]
        for size in self._sizes:  # the keys that start ``text``
            found = self._by_text.get(key[:size]) if size <= len(key) else None
            if found is not None:
                yield found
        if len(key) < AFFIX:  # the longer keys that ``text`` starts: they follow it, sorted
            index = bisect.bisect_right(self._texts, key)
            while index < len(self._texts) and self._texts[index].startswith(key):
                yield self._by_text[self._texts[index]]
                index += 1


class GlobIndex(Generic[T]):
    """Find the items whose globs overlap a glob, testing only those whose longer literal end
    (prefix or suffix) agrees with the glob's."""

    def __init__(self) -> None:
        self._starts: _Affixes[tuple[Glob, T]] = _Affixes()
        self._ends: _Affixes[tuple[Glob, T]] = _Affixes()

    def add(self, glob: Glob, item: T) -> None:
        """Index ``item`` under ``glob``, by the longer of its literal prefix and suffix."""
        if len(glob.prefix) >= len(glob.suffix):
            self._starts.add(glob.prefix, (glob, item))
        else:
            self._ends.add(glob.suffix[::-1], (glob, item))

    def overlapping(self, glob: Glob) -> Iterator[tuple[Glob, T]]:
        """Yield each (glob, item) whose glob overlaps ``glob``."""
        buckets = self._starts.buckets(glob.prefix), self._ends.buckets(glob.suffix[::-1])
        for bucket in itertools.chain(*buckets):
            for entry in bucket:
                if overlap(glob, entry[0]):
                    yield entry


class Neighbours(Generic[T]):
    """Distinct channel patterns with their owners, and which of them overlap which."""

    def __init__(self) -> None:
        self._index: GlobIndex[str] = GlobIndex()
        self.near: dict[str, list[str]] = {}  # pattern -> the patterns it overlaps, itself too
        self.owners: dict[str, list[T]] = defaultdict(list)

    def learn(self, text: str) -> None:
        """Compare pattern ``text`` with the others, once."""
        if text not in self.near:
            glob = pattern_glob(text)
            others = [other for _, other in self._index.overlapping(glob)]
            self.near[text] = [text, *others]
            for other in others:
                self.near[other].append(text)
            self._index.add(glob, text)

    def add(self, text: str, owner: T) -> None:
        """Record that ``owner`` listens to pattern ``text``."""
        self.learn(text)
        self.owners[text].append(owner)


Graph = dict[int, dict[int, str]]  # route -> route it triggers -> the emitted channel


def emit_graph(routes: Sequence[Route], emits: Sequence[Sequence[Glob]]) -> Graph:
    """Return, for each route, the routes one of its emitted channels can match."""
    index: GlobIndex[list[int]] = GlobIndex()
    owners: dict[str, list[int]] = {}  # distinct pattern -> the routes listening to it
    for number, route in enumerate(routes):
        for pattern in route.patterns if route.enabled else ():
            if pattern.text not in owners:
                owners[pattern.text] = []
                index.add(pattern_glob(pattern.text), owners[pattern.text])
            owners[pattern.text].append(number)
    graph: Graph = {}
    for number, globs in enumerate(emits):
        edges: dict[int, str] = {}
        for glob in globs if routes[number].enabled else ():
            for _, targets in index.overlapping(glob):
                for target in targets:
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


def forget() -> None:
    """Drop the globs kept for the table being checked."""
    pattern_glob.cache_clear()
