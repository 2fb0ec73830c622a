"""One object for equal values built at load time: route sets repeat themselves.

Ten thousand routes hold a few hundred distinct conditions, templates and channel patterns;
each route building its own copy kept most of their memory. A ``SharedTable`` hands out the
object already built for an equal key, and forgets it once no route holds it any more (the
table's references are weak), so a reload that drops routes frees what only they used.
Only immutable objects may be shared.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SharedTable(Generic[V]):
    """Equal keys, one object, for as long as something else holds it."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: weakref.WeakValueDictionary[Hashable, V] = weakref.WeakValueDictionary()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """Return the object held for ``key``, or ``build()`` it (an exception is not kept)."""
        found = self._table.get(key)
        if found is None:
            # Two threads may both build it: the objects are equal, either may stay.
            found = build()
            self._table[key] = found
        return found

    def __len__(self) -> int:
        return len(self._table)
