"""A function's recent answers, remembered within bounds."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Generic, TypeVar

K = TypeVar("K", bound=Sized)
V = TypeVar("V")


class Remembered(Generic[K, V]):
    """
    C{function(key)}, remembering the answers for the last C{size} keys of
    at most C{longest} in length (the oldest goes first): for hot-path work
    whose input repeats (a path, a request or response head).  An exception
    is raised again each time, never remembered.
    """

    def __init__(self, function: Callable[[K], V], size: int, longest: int) -> None:
        self._function = function
        self._size = size
        self._longest = longest
        self._known: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            return self._known[key]
        except KeyError:
            pass
        value = self._function(key)
        if len(key) <= self._longest:
            known = self._known
            if len(known) >= self._size:
                del known[next(iter(known))]  # the oldest
            known[key] = value
        return value
