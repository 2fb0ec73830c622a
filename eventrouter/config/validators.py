"""Small voluptuous validators and the wording of configuration errors, shared by the
route files (``config``) and the route test files (``routetest``).

Validators raise ValueError with a message that says what to do; ``wrap`` turns them into
voluptuous validators; ``report`` turns voluptuous errors into ``FILE:LINE`` diagnostics
naming the key path, with a did-you-mean for unknown keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.config.excerpt import excerpt
from eventrouter.config.layout import Layout, empty_mapping, misplaced, place, value_at
from eventrouter.config.patterns import PatternError
from eventrouter.config.suggest import did_you_mean
from eventrouter.config.templates import TemplateSyntaxError
from eventrouter.config.yamlload import line_of
from eventrouter.errors import Diagnostic

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
#: Longest delay (debounce, throttle, retry backoff): anything longer is a typo, not a plan.
MAX_DELAY = 24 * 3600.0
#: Longest timeout (of a step, of the stop): 30 days.
MAX_TIMEOUT = 30 * 24 * 3600.0
_DURATION_HINT = "use 500ms, 30s, 2m, 1h or seconds"


def parse_duration(value: Any, maximum: float = MAX_TIMEOUT) -> float:
    """Return seconds for ``500ms``, ``30s``, ``2m``, ``1h`` or a number; raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({_DURATION_HINT})")
    if isinstance(value, int | float):
        seconds = _seconds(value)
    else:
        found = _DURATION.fullmatch(str(value))
        if not found:
            raise ValueError(f"{excerpt(value)} is not a duration ({_DURATION_HINT})")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    if seconds > maximum:
        raise ValueError(f"a duration here is at most {_hours(maximum)}")
    return seconds


def parse_delay(value: Any) -> float:
    """Return seconds for a debounce, throttle or backoff (at most ``MAX_DELAY``)."""
    return parse_duration(value, MAX_DELAY)


def _seconds(value: int | float) -> float:
    """Return a YAML number as seconds, refusing .nan and .inf (which compare as nothing)."""
    if value != value:  # noqa: PLR0124 (NaN is the one value not equal to itself)
        raise ValueError(f"a duration cannot be .nan (not a number); {_DURATION_HINT}")
    try:
        seconds = float(value)
    except OverflowError:
        return math.inf  # a whole number too large for a float is past any maximum
    if math.isinf(seconds):
        raise ValueError(f"a duration must be finite, not {seconds} ({_DURATION_HINT})")
    return seconds


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    days = f" ({hours / 24:g} days)" if hours > 24 else ""
    return f"{hours:g}h{days}"


def wrap(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Turn a function raising ValueError into a voluptuous validator."""

    def validator(value: Any) -> Any:
        try:
            return check(value)
        except (ValueError, PatternError, TemplateSyntaxError) as exc:
            raise vol.Invalid(str(exc)) from exc

    return validator


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {kind(value)}")
    return value


def mapping(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of variable names to values, got {kind(value)}")
    return value


def kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    for kind, name in (
        (bool, "a boolean"),
        (dict, "a mapping"),
        (list, "a list"),
        (str, "a string"),
        (int, "a number"),
        (float, "a number"),
    ):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {excerpt(value)}")
    return value


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {excerpt(value)}")
    return value


@dataclass
class FileContext:
    """Where findings go while one file is checked."""

    path: Path
    data: Any
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, where: list[Any], message: str) -> None:
        line = line_of(self.data, where, 1)
        self.diagnostics.append(Diagnostic(str(self.path), line, "error", message))

    def warning(self, where: list[Any], message: str) -> None:
        line = line_of(self.data, where, 1)
        self.diagnostics.append(Diagnostic(str(self.path), line, "warning", message))


def key_path(path: Iterable[Any]) -> str:
    text = ""
    for step in path:
        name = _key_name(step)
        text += f"[{step}]" if isinstance(step, int) else (f".{name}" if text else name)
    return text


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_?][A-Za-z0-9_.?-]{0,39}")


def plain_key(key: Any) -> str | None:
    """Return ``key`` (or the key a voluptuous marker names) when it is a plain name."""
    if isinstance(key, vol.Marker):
        key = key.schema
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else None


def _key_name(key: Any) -> str:
    """Return a key as written when it is a plain name, else a short escaped quote of it."""
    name = plain_key(key)
    return name if name is not None else excerpt(key)


def explain(error: vol.Invalid, allowed: Iterable[str], hint: str = "") -> str:
    """Rewrite a voluptuous message into one that says what to do.

    ``hint`` says where an unknown key belongs when it is in the wrong place; a
    did-you-mean would then only mislead.
    """
    key = error.path[-1] if error.path else None
    if isinstance(key, vol.Marker):
        key = key.schema
    message = error.error_message
    if message == "extra keys not allowed":
        close = "" if hint else did_you_mean(key, allowed)
        where = f"; {hint}" if hint else ""
        return f"unknown key {excerpt(key)}{close}; allowed keys: {', '.join(allowed)}{where}"
    if message == "required key not provided":
        return f"missing required key {excerpt(key)}"
    if message.startswith(("expected dict", "expected a dictionary")):
        return "expected a mapping"
    if message.startswith("expected list"):
        return "expected a list"
    return message


def report(ctx: FileContext, prefix: list[Any], exc: vol.MultipleInvalid, layout: Layout) -> None:
    """Report each voluptuous error at its line: its key path, what is wrong, what to do."""
    for error in exc.errors:
        where = prefix + list(error.path)
        position = place(layout, where[:-1])
        keys = layout.get(position, ()) if position is not None else ()
        hint = ""
        if error.error_message == "extra keys not allowed" and position is not None:
            hint = misplaced(layout, position, plain_key(where[-1]))
        message = explain(error, keys, hint)
        if error.error_message.startswith(("expected dict", "expected a dictionary")):
            got = kind(value_at(ctx.data, where))
            inside = empty_mapping(layout, ctx.data, where)
            message = f"expected a mapping, got {got}" + (f"; {inside}" if inside else "")
        ctx.error(where, f"{key_path(where) or 'file'}: {message}")
