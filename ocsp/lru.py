"""A mapping bounded in bytes, least recently used out first: for caches that traffic fills.

Whatever clients send, such a cache never holds more than ``capacity`` bytes by its own accounting.
Each entry is charged what the caller says it costs (its variable part) plus ``overhead`` (the dict
slot, list links, key and value objects: measured in ``tests/test_ocsp_caches.py``, so the charge is
an upper bound, not a guess). Safe to use from several threads: writes take a lock, reads need none.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLru(Generic[K, V]):
    """``get`` refreshes an entry; ``put`` evicts the least recently used ones until it fits."""

    def __init__(self, capacity: int, overhead: int) -> None:
        self.capacity, self.overhead = capacity, overhead
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K, default: V | None = None) -> V | None:
        """Without the lock (the answer path): each OrderedDict call is atomic, and a read changes no count."""
        found = self._items.get(key)
        if found is None:
            return default
        try:
            self._items.move_to_end(key)
        except KeyError:  # evicted by another thread in between: still a valid answer for this call
            return found[0]
        return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Remember ``value`` charged ``size + overhead`` bytes; an entry larger than the whole cache is not kept."""
        cost = size + self.overhead
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if cost > self.capacity:
                return
            self._items[key] = (value, cost)
            self.bytes += cost
            while self.bytes > self.capacity:
                _, (_, evicted) = self._items.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1

    def __setitem__(self, key: K, value: V) -> None:
        raise TypeError("use put(key, value, size): every entry is charged its size")

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            found = self._items.pop(key, None)
            if found is None:
                return default
            self.bytes -= found[1]
            return found[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
