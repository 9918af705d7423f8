"""What every sink implements, and the thread that feeds a sink from its own queue."""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import Callable

from stream.frame import Frame, StreamEnd
from stream.queues import BoundedQueue, Overflow, QueueClosed

log = logging.getLogger("chromacast.sinks")


class SinkError(RuntimeError):
    """A sink that cannot open or write; str() is one line for the user."""


class Sink(ABC):
    """Receives colorized frames (frame.colour) and end-of-stream markers, in stream order."""

    name: str = "sink"
    lossy: bool = False  # True: may skip frames when behind (a viewer); False: backpressure

    @abstractmethod
    def write(self, frame: Frame) -> None: ...

    def end_stream(self, end: StreamEnd) -> None:
        """The stream's last frame has been written."""

    def close(self) -> None:
        """Flush and release everything; called once, after the last write."""


class SinkWorker(threading.Thread):
    """Runs one sink in its own thread behind a bounded queue, so a slow sink delays the
    others only through backpressure (lossless sinks) or not at all (lossy sinks)."""

    def __init__(self, sink: Sink, capacity: int, on_error: Callable[[str], None]):
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.sink = sink
        self.queue: BoundedQueue = BoundedQueue(
            capacity, Overflow.DROP_OLDEST if sink.lossy else Overflow.BLOCK, name=sink.name)
        self._on_error = on_error
        self.failed = False

    def run(self) -> None:
        try:
            while True:
                try:
                    item = self.queue.get()
                except QueueClosed:
                    break
                if self.failed:
                    continue  # keep draining so producers never block on a dead sink
                try:
                    if isinstance(item, StreamEnd):
                        self.sink.end_stream(item)
                    else:
                        self.sink.write(item)
                except Exception as exc:
                    self.failed = True
                    self._on_error(f"{self.sink.name}: {_one_line(exc)}")
        finally:
            try:
                self.sink.close()
            except Exception as exc:
                self._on_error(f"{self.sink.name}: {_one_line(exc)}")


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if isinstance(exc, SinkError) else f"{type(exc).__name__}: {text}"
