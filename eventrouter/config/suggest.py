"""Did-you-mean hints for configuration errors: a close name out of the known ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: How alike two names must be (difflib's ratio) to suggest one for the other.
CUTOFF = 0.6


def close_match(word: object, known: Iterable[str], cutoff: float = CUTOFF) -> str | None:
    """Return the known name closest to ``word``, or None when none is close."""
    if not isinstance(word, str) or not word:
        return None
    found = difflib.get_close_matches(word, sorted(set(known)), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: object, known: Iterable[str], cutoff: float = CUTOFF) -> str:
    """Return `` (did you mean 'x'?)`` for the known name closest to ``word``, else ""."""
    close = close_match(word, known, cutoff)
    return f" (did you mean {close!r}?)" if close is not None else ""
