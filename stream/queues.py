"""Bounded queues between stages, with the two overflow policies the pipeline needs.

Live sources must not build up delay: when the consumer falls behind, the oldest waiting
item is dropped and counted (DROP_OLDEST). File sources must not lose frames: a full queue
blocks the producer until there is room (BLOCK), which slows the reader to the engine's pace.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from enum import Enum
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Overflow(str, Enum):
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


class QueueClosed(Exception):
    """get() on a closed queue that has nothing left, or put() on a closed queue."""


class BoundedQueue(Generic[T]):
    """A FIFO of at most `capacity` items.

    Several queues may share one `condition` so that a consumer (the batcher) can wait for
    any of them at once. `on_drop` is called with each dropped item (outside no lock: keep it
    cheap)."""

    def __init__(self, capacity: int, overflow: Overflow = Overflow.BLOCK, name: str = "",
                 condition: threading.Condition | None = None,
                 on_drop: Callable[[T], None] | None = None):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.overflow = Overflow(overflow)
        self.name = name
        self.dropped = 0
        self._items: deque[T] = deque()
        self._cond = condition or threading.Condition()
        self._on_drop = on_drop
        self._closed = False

    @property
    def condition(self) -> threading.Condition:
        return self._cond

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, timeout: float | None = None, force: bool = False) -> bool:
        """Add `item`. DROP_OLDEST never waits; BLOCK waits for room (up to `timeout`).
        `force` ignores the capacity (for end-of-stream markers: a source puts nothing after
        one, so it is never dropped).
        Returns False if the item was not added (timeout); raises QueueClosed if closed."""
        dropped = None
        with self._cond:
            if self._closed:
                raise QueueClosed(self.name)
            if not force and len(self._items) >= self.capacity:
                if self.overflow is Overflow.DROP_OLDEST:
                    dropped = self._items.popleft()
                    self.dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.capacity and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return False
                        self._cond.wait(left)
                    if self._closed:
                        raise QueueClosed(self.name)
            self._items.append(item)
            self._cond.notify_all()
        if dropped is not None and self._on_drop:
            self._on_drop(dropped)
        return True

    def get(self, timeout: float | None = None) -> T:
        """Oldest item; waits up to `timeout` (TimeoutError), QueueClosed once closed and empty."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise QueueClosed(self.name)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def peek(self) -> T | None:
        """The oldest item without removing it (None when empty). Call with the condition held
        when the answer must stay true until a following pop."""
        return self._items[0] if self._items else None

    def pop_nowait(self) -> T:
        with self._cond:
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; getters drain what is left, then see QueueClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n
