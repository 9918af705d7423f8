"""Two small helpers that overlap file I/O with inference through bounded queues.

`prefetch` runs a producer (decoding) on a thread a few items ahead of its consumer;
`BackgroundWorker` runs a consumer (encoding) on a thread a few items behind its
producer. Both pass errors back to the calling thread and never drop an item.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Block until `item` is queued or `stop` is set; False if stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], depth: int = 4, name: str = "prefetch") -> Iterator[T]:
    """Yield `items`, produced on a background thread at most `depth` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(q, item, stop):
                    return
            _put(q, _DONE, stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(q, _Failure(exc), stop)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    try:
        thread.start()  # inside the try: a Ctrl-C during start() must still stop and join it
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join()  # the producer owns its resources until it has stopped


class BackgroundWorker(Generic[T]):
    """Calls `handler(item)` for every submitted item, in order, on one thread.

    `submit` blocks while `depth` items wait. A handler error is raised by the next
    `submit` or by `close`; items after it are discarded."""

    def __init__(self, handler: Callable[[T], None], depth: int = 4, name: str = "worker"):
        self._handler = handler
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._handler(item)
                except BaseException as exc:
                    self._error = exc

    def submit(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        """Handle everything already submitted, stop the thread, raise its error if any."""
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
