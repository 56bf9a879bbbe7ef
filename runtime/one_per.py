"""One object per key (an aiohttp app, an event loop), made on first use and dropped with its key."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")


class OnePer(Generic[K, T]):
    """``OnePer(TwilioBridge)(app)``: the app's bridge, made by ``TwilioBridge(app)`` the first time."""

    def __init__(self, make: Callable[[K], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[K, T] = weakref.WeakKeyDictionary()

    def __call__(self, key: K) -> T:
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = self._make(key)
        return found
