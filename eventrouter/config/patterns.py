"""Channel patterns: Redis glob syntax plus ``{name}`` captures, and the route index."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, NamedTuple

from eventrouter.model import Route
from eventrouter.support.sharing import SharedTable

_CAPTURE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_SPECIAL = frozenset("*?[\\")
#: A run of literal characters: none of ``* ? [ \\ { }``.
_LITERAL_RUN = re.compile(r"[^*?\[\\{}]+")
PieceKind = Literal["literal", "star", "any", "class", "capture"]


class PatternError(ValueError):
    """A channel pattern is malformed."""


class Piece(NamedTuple):
    """One element of a channel pattern, as the one tokenizer of the glob grammar reads it.

    ``literal``: characters that stand for themselves (``text``, escapes removed); ``star``,
    ``any``: ``*`` and ``?``; ``class``: ``[...]`` (``negated``, ``ranges`` of characters);
    ``capture``: ``{name}`` (``text`` is the name). ``written``: the piece as in the pattern.
    """

    kind: PieceKind
    text: str
    written: str
    negated: bool = False
    ranges: tuple[tuple[str, str], ...] = ()


_WILDCARDS = {"*": Piece("star", "*", "*"), "?": Piece("any", "?", "?")}


def _char_class(pattern: str, start: int) -> tuple[Piece, int]:
    """Read the ``[...]`` class starting at ``start``; return it and the index after it."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    ranges: list[tuple[str, str]] = []
    while i < len(pattern) and pattern[i] != "]":
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            ranges.append((pattern[i + 1], pattern[i + 1]))
            i += 2
        elif i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] == "]":
            # Redis reads "x-]" as a range up to "]" and runs the class on: refuse the ambiguity.
            raise PatternError(
                f"ambiguous '{char}-]' in the class at position {start + 1}; "
                "put '-' first in the class to mean a dash"
            )
        elif i + 2 < len(pattern) and pattern[i + 1] == "-":
            low, high = sorted((char, pattern[i + 2]))  # Redis accepts reversed ranges
            ranges.append((low, high))
            i += 3
        else:
            ranges.append((char, char))
            i += 1
    if i >= len(pattern):
        raise PatternError(f"unclosed '[' at position {start + 1}")
    if not ranges:
        raise PatternError(f"empty character class at position {start + 1}")
    written = pattern[start : i + 1]
    return Piece("class", written, written, negate, tuple(ranges)), i + 1


def _capture(pattern: str, start: int, seen: set[str]) -> tuple[Piece, int]:
    """Read the ``{name}`` capture at ``start``; return it and the index after it."""
    end = pattern.find("}", start)
    if end < 0:
        raise PatternError(f"unclosed '{{' at position {start + 1}")
    name = pattern[start + 1 : end]
    if not _CAPTURE.fullmatch(name):
        raise PatternError(f"capture name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if name in seen:
        raise PatternError(f"capture {{{name}}} appears twice")
    seen.add(name)
    return Piece("capture", name, pattern[start : end + 1]), end + 1


def _plain(text: str, i: int) -> tuple[Piece, int]:
    """Read the literal run, or the escaped character, at ``i``."""
    if text[i] == "\\":
        if i + 1 >= len(text):
            raise PatternError("pattern ends with a lone '\\'")
        return Piece("literal", text[i + 1], text[i : i + 2]), i + 2
    run = _LITERAL_RUN.match(text, i + 1)  # a whole literal run at once, in C
    end = run.end() if run is not None else i + 1
    return Piece("literal", text[i:end], text[i:end]), end


def tokenize(text: str) -> list[Piece]:
    """Split a channel pattern into pieces; raise PatternError with what is wrong."""
    if not text:
        raise PatternError("empty pattern")
    pieces: list[Piece] = []
    names: set[str] = set()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "{":
            piece, i = _capture(text, i, names)
        elif char == "}":
            raise PatternError(f"unmatched '}}' at position {i + 1}")
        elif char in "*?":
            piece, i = _WILDCARDS[char], i + 1
        elif char == "[":
            piece, i = _char_class(text, i)
        else:
            piece, i = _plain(text, i)
        pieces.append(piece)
    return pieces


def _class_regex(piece: Piece) -> str:
    parts = (
        re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
        for low, high in piece.ranges
    )
    return f"[{'^' if piece.negated else ''}{''.join(parts)}]"


def compile_pattern(text: str) -> tuple[str, str, tuple[str, ...]]:
    """Translate a channel pattern into (Python regex, Redis glob, capture names)."""
    regex: list[str] = []
    glob: list[str] = []
    names: list[str] = []
    for piece in tokenize(text):
        glob.append("*" if piece.kind == "capture" else piece.written)
        if piece.kind == "literal":
            regex.append(re.escape(piece.text))
        elif piece.kind == "capture":
            names.append(piece.text)
            regex.append(f"(?P<{piece.text}>[^/]+)")
        elif piece.kind == "class":
            regex.append(_class_regex(piece))
        else:
            regex.append(".*" if piece.kind == "star" else ".")
    return "".join(regex), "".join(glob), tuple(names)


@lru_cache(maxsize=16384)
def _compiled(regex: str) -> re.Pattern[str]:
    """Compile once per distinct regex: route sets repeat their patterns."""
    return re.compile(regex, re.DOTALL)


@dataclass(frozen=True)
class ChannelPattern:
    """A compiled channel pattern (implements ``model.Matcher``)."""

    text: str
    glob: str
    captures: tuple[str, ...]
    #: None for a literal pattern, which is compared as a string; else the regex source,
    #: compiled on first use (shared by equal patterns): loading stays fast and small.
    regex: str | None = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> ChannelPattern:
        """Compile ``text``; raise PatternError with what is wrong."""
        regex, glob, names = compile_pattern(_as_bytes(text))
        if not any(char in _GLOB_SPECIAL for char in glob):
            return cls(text=text, glob=glob, captures=names, regex=None)
        return cls(text=text, glob=glob, captures=names, regex=regex)

    @classmethod
    def shared(cls, text: str) -> ChannelPattern:
        """Return ``parse(text)``, one object for every route that writes the same pattern."""
        return _PATTERNS.get(text, lambda: cls.parse(text))

    @property
    def literal(self) -> bool:
        """Return True when the pattern matches exactly one channel."""
        return self.regex is None

    def match(self, channel: str) -> dict[str, str] | None:
        """Return the captures when ``channel`` matches, else None."""
        if self.regex is None:
            return {} if channel == self.text else None
        regex = _compiled(self.regex)
        if channel.isascii():
            found = regex.fullmatch(channel)
            return None if found is None else found.groupdict()
        found = regex.fullmatch(_as_bytes(channel))
        if found is None:
            return None
        return {key: _from_bytes(value) for key, value in found.groupdict().items()}


_PATTERNS: SharedTable[ChannelPattern] = SharedTable()


# Redis matches bytes: '?' is one byte, a class holds bytes. Matching on the UTF-8 bytes,
# each seen as one latin-1 character, keeps our answer equal to Redis's for any channel.
def _as_bytes(text: str) -> str:
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("latin-1")


def _from_bytes(text: str) -> str:
    return text if text.isascii() else text.encode("latin-1").decode("utf-8", "replace")


def glob_escape(channel: str) -> str:
    """Return a Redis glob matching exactly ``channel``."""
    return "".join("\\" + char if char in "*?[]\\{}" else char for char in channel)


class RouteIndex:
    """Find the routes whose patterns match a channel, in configuration order.

    Literal patterns are a dictionary lookup; the others are grouped by their literal first
    path segment, so an event is only tested against patterns that can possibly match it.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._exact: dict[str, list[tuple[int, Route, ChannelPattern]]] = {}
        self._by_head: dict[str, list[tuple[int, Route, ChannelPattern]]] = {}
        self._anywhere: list[tuple[int, Route, ChannelPattern]] = []
        for order, route in enumerate(self.routes):
            if not route.enabled:
                continue
            for pattern in route.patterns:
                assert isinstance(pattern, ChannelPattern)
                entry = (order, route, pattern)
                head, sep, _ = pattern.glob.partition("/")
                if pattern.literal:
                    self._exact.setdefault(pattern.text, []).append(entry)
                elif sep and not any(char in _GLOB_SPECIAL for char in head):
                    self._by_head.setdefault(head, []).append(entry)
                else:
                    self._anywhere.append(entry)

    def globs(self) -> set[str]:
        """Return the Redis globs to PSUBSCRIBE to."""
        return {
            pattern.glob for route in self.routes if route.enabled for pattern in route.patterns
        }

    def _candidates(self, channel: str) -> Iterator[tuple[int, Route, ChannelPattern]]:
        yield from self._exact.get(channel, ())
        head, sep, _ = channel.partition("/")
        if sep:
            yield from self._by_head.get(head, ())
        yield from self._anywhere

    def match(self, channel: str) -> list[tuple[Route, dict[str, str]]]:
        """Return each enabled route matching ``channel`` once, with its captures."""
        found: dict[int, tuple[Route, dict[str, str]]] = {}
        for order, route, pattern in self._candidates(channel):
            if order in found:
                continue
            captures = pattern.match(channel)
            if captures is not None:
                found[order] = (route, captures)
        return [found[order] for order in sorted(found)]
