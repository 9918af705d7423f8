"""The batcher: gathers frames across streams for one engine call.

Each stream has its own bounded queue (drop-oldest for live sources, blocking for files),
all sharing one condition so the batcher can wait for any of them. A batch takes at most
one frame per stream (a stream's frames are sequential through its recurrent state), waits
at most about one frame interval for the other streams to fill it (nvstreammux's rule:
timeout ≈ 1/fps), and is split into groups of equal network size.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from stream.frame import Frame, StreamEnd
from stream.queues import BoundedQueue, Overflow

MAX_DEFAULT_WAIT_S = 0.05  # never hold a batch longer than this when waiting on its own
# a stream counts as delivering while its last frame is at most this many frame intervals old;
# a batch never waits for one that is not (a camera that is down, reconnecting or stalled)
DELIVERING_INTERVALS = 3.0


@dataclass
class Gathered:
    groups: list[list[Frame]] = field(default_factory=list)  # frames of one network size each
    ends: list[StreamEnd] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.groups or self.ends)


class Batcher:
    def __init__(self, size_of: Callable[[Frame], tuple[int, int]], max_batch: int = 8,
                 max_wait_s: float | None = None):
        self.size_of = size_of
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.condition = threading.Condition()
        self.queues: dict[str, BoundedQueue] = {}
        self._fps: dict[str, float] = {}
        self._last_frame: dict[str, float] = {}  # monotonic time each stream last gave a frame
        self._no_more_streams = False
        self._rotation = 0

    def add_stream(self, stream_id: str, capacity: int, overflow: Overflow, fps: float,
                   on_drop: Callable | None = None) -> BoundedQueue:
        """The queue a source feeds; it shares the batcher's condition."""
        queue = BoundedQueue(capacity, overflow, name=stream_id, condition=self.condition, on_drop=on_drop)
        with self.condition:
            self.queues[stream_id] = queue
            self._fps[stream_id] = fps
        return queue

    def no_more_streams(self) -> None:
        """After this, `gather` returns None once every stream has ended."""
        with self.condition:
            self._no_more_streams = True
            self.condition.notify_all()

    @property
    def finished(self) -> bool:
        return self._no_more_streams and not self.queues

    def wait_s(self) -> float:
        if self.max_wait_s is not None:
            return self.max_wait_s
        fastest = max(self._fps.values(), default=0.0)
        return min(1.0 / fastest, MAX_DEFAULT_WAIT_S) if fastest > 0 else MAX_DEFAULT_WAIT_S

    def gather(self, timeout: float = 0.5) -> Gathered | None:
        """The next batch (possibly empty after `timeout`), or None when all streams ended."""
        with self.condition:
            self.condition.wait_for(self._anything_waiting, timeout)
            if self.finished:
                return None
            ends = self._pop_ends()
            if self.queues and not ends:
                self._wait_for_fuller_batch()
            frames = self._pop_heads()
        return Gathered(self._group(frames), ends)

    def _anything_waiting(self) -> bool:
        return self.finished or any(len(q) for q in self.queues.values())

    def _pop_ends(self) -> list[StreamEnd]:
        ends = []
        for stream_id, queue in list(self.queues.items()):
            if isinstance(queue.peek(), StreamEnd):
                ends.append(queue.pop_nowait())
                queue.close()
                del self.queues[stream_id]
                del self._fps[stream_id]
                self._last_frame.pop(stream_id, None)
        return ends

    def _delivering(self, now: float) -> int:
        """Streams with a frame waiting or a recent one: those worth waiting for."""
        count = 0
        for stream_id, queue in self.queues.items():
            fps = self._fps.get(stream_id) or 1.0 / MAX_DEFAULT_WAIT_S
            if len(queue) or now - self._last_frame.get(stream_id, -1e18) <= DELIVERING_INTERVALS / fps:
                count += 1
        return count

    def _wait_for_fuller_batch(self) -> None:
        deadline = time.monotonic() + self.wait_s()
        while True:
            now = time.monotonic()
            waiting = sum(1 for q in self.queues.values() if len(q))
            if waiting >= min(self.max_batch, self._delivering(now)) or now >= deadline:
                return
            self.condition.wait(deadline - now)

    def _pop_heads(self) -> list[Frame]:
        ids = list(self.queues)
        if not ids:
            return []
        # rotate the starting stream so no stream starves when streams outnumber max_batch
        self._rotation = (self._rotation + 1) % len(ids)
        frames = []
        for stream_id in ids[self._rotation:] + ids[:self._rotation]:
            queue = self.queues[stream_id]
            if isinstance(queue.peek(), Frame):
                frames.append(queue.pop_nowait())
                self._last_frame[stream_id] = time.monotonic()
                if len(frames) == self.max_batch:
                    break
        return frames

    def _group(self, frames: list[Frame]) -> list[list[Frame]]:
        groups: dict[tuple[int, int], list[Frame]] = {}
        for frame in frames:
            groups.setdefault(self.size_of(frame), []).append(frame)
        return list(groups.values())
