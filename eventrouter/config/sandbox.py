"""The Jinja2 sandbox of route templates, with a memory budget.

The time budget (``budget.Watchdog``) can only interrupt a render between two Python steps; a
single C operation (``'x' * 10**10``, ``10 ** 10**9``, ``'a'.center(10**10)``) runs to its end.
So the operations that build a value much larger than their inputs are refused up front: the
``*``, ``**``, ``+`` and ``%`` operators, ``~`` concatenation, string methods and filters
given huge widths or counts. Every refusal is a SecurityError naming the limit.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat, EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from eventrouter.config import ns8

#: Longest string or list a template may build, and longest text it may render (characters).
MAX_SIZE = 4 * 1024 * 1024
#: Largest integer result of ``**``, in bits.
MAX_BITS = 64 * 1024
_BIG_NUMBER = re.compile(r"[0-9]{7,}")  # 7 digits and more may exceed MAX_SIZE
#: printf-style conversions taking their width or precision from the arguments (``%*d``).
_PRINTF_STAR = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|[0-9]*\.\*)")
#: str.format fields whose spec holds a nested field (``{:{width}}``).
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
#: String methods whose integer arguments set the size of the result.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would exceed the template size limit ({MAX_SIZE} characters)")


def _size(value: Any) -> int | None:
    """Return the length of a string, list or tuple; None for anything else."""
    return len(value) if isinstance(value, str | list | tuple) else None


def check_size(value: Any, what: str) -> Any:
    """Return ``value``; refuse a string or list longer than MAX_SIZE."""
    size = _size(value)
    if size is not None and size > MAX_SIZE:
        raise _refuse(what)
    return value


def _check_multiply(left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        size = _size(sequence)
        if size is not None and isinstance(count, int) and size * count > MAX_SIZE:
            raise _refuse(f"repeating a sequence {count} times")


def _check_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    if abs(base) > 1 and abs(base).bit_length() * exponent > MAX_BITS:
        raise SecurityError(f"a power with more than {MAX_BITS} bits is not allowed")


def _check_numbers(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
    """Refuse integer arguments (widths, counts) and format strings naming huge widths."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise _refuse(f"{what} with {value}")


def _check_format(text: str, what: str) -> None:
    """Refuse a format string naming a huge width or precision."""
    for number in _BIG_NUMBER.findall(text):
        if int(number) > MAX_SIZE:
            raise _refuse(f"{what} with width {number}")


def _check_printf(text: str, args: Any, what: str) -> None:
    """Check ``text % args``: widths written in ``text``, or taken from ``args`` by ``*``."""
    _check_format(text, what)
    if _PRINTF_STAR.search(text):
        _check_numbers(args if isinstance(args, tuple) else (args,), {}, what)


def _check_replace(text: str, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * (len(new) - len(old)) > MAX_SIZE:
        raise _refuse("replace")


def _check_indent(text: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = str(text)
    if len(text) + (text.count("\n") + 1) * pad > MAX_SIZE:
        raise _refuse("indent")


def _check_str_call(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Check a call of a string method before it runs."""
    text, name = method.__self__, method.__name__
    if name in _WIDTH_METHODS:
        _check_numbers(args, kwargs, f"str.{name}")
    elif name in ("format", "format_map"):
        _check_format(text, f"str.{name}")
        if _NESTED_FIELD.search(text):
            _check_numbers(args, kwargs, f"str.{name}")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, *args[:3])
    elif name == "join" and args and isinstance(args[0], list | tuple):
        total = sum(len(item) for item in args[0] if isinstance(item, str))
        if total + len(text) * len(args[0]) > MAX_SIZE:
            raise _refuse("str.join")


def _guard_filter(function: Callable[..., Any], check: Callable[..., None]) -> Any:
    """Wrap a filter so that ``check`` sees its arguments first (pass_* markers kept)."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        values = args[1:] if args and isinstance(args[0], EvalContext) else args
        check(*values, **kwargs)
        return function(*args, **kwargs)

    return guarded


def _check_filter_numbers(name: str) -> Callable[..., None]:
    def check(value: Any, *args: Any, **kwargs: Any) -> None:
        if name == "format":
            _check_printf(str(value), kwargs or args, "filter format")
        else:
            _check_numbers(args, kwargs, f"filter {name}")

    return check


def _check_replace_filter(text: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    _check_numbers((count,), {}, "filter replace")
    _check_replace(str(text), old, new, -1 if count is None else count)


class _Generator(CodeGenerator):
    """Compile ``a ~ b`` through ``environment.concat_checked``, which bounds the result."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        """Write a size-checked concatenation."""
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing operations that build huge values in one C call."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Check an intercepted operator's result size before computing it."""
        if operator == "*":
            _check_multiply(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            first, second = _size(left), _size(right)
            if first is not None and second is not None and first + second > MAX_SIZE:
                raise _refuse("concatenating")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right, "formatting")
        return self.binop_table[operator](left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Check string method calls (widths, counts, growth) before the sandbox runs them."""
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        if isinstance(getattr(method, "__self__", None), str):
            _check_str_call(method, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def concat_checked(self, parts: tuple[Any, ...]) -> str:
        """Join ``parts`` as text, as ``~`` does; refuse a result over MAX_SIZE."""
        texts = [str(part) for part in parts]
        if sum(len(text) for text in texts) > MAX_SIZE:
            raise _refuse("concatenating")
        return "".join(texts)


def make_environment() -> Sandbox:
    """Return the route templates' environment: sandboxed, strict, size-guarded filters."""
    env = Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    for name in ("center", "format", "wordwrap", "truncate"):
        env.filters[name] = _guard_filter(env.filters[name], _check_filter_numbers(name))
    env.filters["indent"] = _guard_filter(env.filters["indent"], _check_indent)
    env.filters["replace"] = _guard_filter(env.filters["replace"], _check_replace_filter)
    env.tests.update(ns8.TESTS)  # NS8's rules as tests: payload is certificate_for(...)
    return env
