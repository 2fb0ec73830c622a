"""Short, escaped quotes of what a file holds, for error messages.

A route file may be anything (a symlink to a secret, a file of another format): an error
about it quotes at most a few dozen characters of a key or value, escaped, never a whole
line of it.
"""

from __future__ import annotations

import re

#: Most characters of a key or value an error message quotes.
EXCERPT_LIMIT = 40


def excerpt(value: object, limit: int = EXCERPT_LIMIT) -> str:
    """Return a short, escaped quote of ``value`` (``'abc...'`` when cut)."""
    if isinstance(value, str):
        # repr escapes quotes, control characters and line separators: no forged lines.
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts
        return f"a {type(value).__name__} too large to show"
    return text[:limit] + "..." if len(text) > limit else text


#: Most characters of a parser's message kept in an error.
MESSAGE_LIMIT = 160
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")


def bound_message(message: str) -> str:
    """Return a parser's message with every quoted piece cut short and escaped, and bounded."""

    def cut(match: re.Match[str]) -> str:
        return excerpt(match.group(1) if match.group(1) is not None else match.group(2))

    text = _QUOTED.sub(cut, message)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text[:MESSAGE_LIMIT] + "..." if len(text) > MESSAGE_LIMIT else text
