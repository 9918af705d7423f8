"""The ingest stage: one thread per source that reads frames, stamps their header, extracts
the full-resolution L plane and hands them to the engine's queue for that stream.

Live sources (webcam, RTSP, or a file with `realtime: true`) never wait for the engine:
their queue drops the oldest frame and counts it, so latency stays bounded. A lost camera is
reopened with bounded exponential backoff; after `give_up_after_s` without it the stream
ends cleanly. A camera that was not up when the pipeline opened starts out disconnected
and is connected the same way. File sources block on a full queue (backpressure) and never drop.
"""
from __future__ import annotations

import logging
import threading
import time

from engines.colour import to_l8
from stream.config import SourceConfig, StateConfig
from stream.frame import Frame, FrameHeader, StreamEnd, now_ns
from stream.queues import BoundedQueue, QueueClosed
from stream.sources import Capture, CaptureLost, Disconnected, SourceError, open_capture
from stream.stats import Stats

log = logging.getLogger("chromacast.ingest")


class SourceWorker(threading.Thread):
    """Reads one source until it ends, is stopped, or its camera stays away too long."""

    def __init__(self, config: SourceConfig, capture: Capture, queue: BoundedQueue, stats: Stats,
                 state: StateConfig):
        super().__init__(name=f"ingest-{config.id}", daemon=True)
        self.config, self.capture, self.queue = config, capture, queue
        self.stream_id: str = config.id
        self.stats = stats.stream(self.stream_id)
        self._stats_root = stats
        self.gap_s = state.gap_s
        self.fps = capture.fps
        self._stop_event = threading.Event()
        self._end_lock = threading.Lock()
        self._ended = False  # StreamEnd sent: nothing more may be queued
        self._unusable = 0  # frames read but unusable (empty, unsupported pixel format)
        self._skipped_closed = 0  # undecodable frames of captures already closed (reconnects, loops)

    def stop(self) -> None:
        """Stop reading; what is already queued still goes through the pipeline."""
        self._stop_event.set()

    def abandon(self) -> None:
        """End the stream now for a source stuck in a blocking read after stop(); the
        thread finds out when the read returns, and closes its capture then."""
        if self.is_alive() and self.stopping:
            self._send_end("")

    def _send_end(self, reason: str) -> None:
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
            self.stats.ended = reason
            try:
                self.queue.put(StreamEnd(self.stream_id, reason), force=True)
            except QueueClosed:
                pass

    @property
    def connected(self) -> bool:
        """False while a lost live camera is being reconnected."""
        return not isinstance(self.capture, Disconnected)

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> None:
        reason = ""
        try:
            reason = self._read_loop()
        except Exception as exc:  # a broken source ends its own stream, never the pipeline
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("%s: stream stopped by an error: %s", self.stream_id, reason)
        finally:
            self.capture.close()
            self._send_end(reason)

    def _read_loop(self) -> str:
        config, live = self.config, self.config.live
        seq, epoch = 0, 0
        last_read = None
        pace_period = 1.0 / self.fps if config.realtime else 0.0
        next_due = time.monotonic()
        while not self.stopping:
            try:
                image = self.capture.read()
            except CaptureLost as exc:
                first = seq == 0 and isinstance(self.capture, Disconnected)
                if not first:
                    log.warning("%s: camera lost (%s); reconnecting", self.stream_id, exc)
                if not self._reconnect(first):
                    return "" if self.stopping else (
                        f"camera did not {'come up' if first else 'come back'} within "
                        f"{config.reconnect.give_up_after_s:g} s")
                epoch += 1
                continue
            finally:
                self._count_skipped()
            if image is None:  # end of file or folder
                if config.loop and seq > 0:
                    self._reopen()
                    epoch += 1  # the clip starts again: a cut for the recurrent state
                    continue
                return ""
            if pace_period:
                next_due = self._pace(next_due, pace_period)
            now = time.monotonic()
            if live and last_read is not None and now - last_read > self.gap_s:
                epoch += 1  # a long pause: the old state no longer fits the picture
            last_read = now
            frame = self._prepare(image, seq, epoch)
            if frame is None:
                continue
            if not self._hand_over(frame):
                return ""
            self._stats_root.frame_in(self.stats)
            seq += 1
            if config.max_frames and seq >= config.max_frames:
                return ""
        return ""

    def _prepare(self, image, seq: int, epoch: int) -> Frame | None:
        """Header and L plane; None (counted as skipped) for a frame that cannot be used."""
        h, w = image.shape[:2] if image.ndim >= 2 else (0, 0)
        header = FrameHeader(self.stream_id, seq, now_ns(), w, h, self.fps, epoch)
        if image.size == 0 or w < 2 or h < 2:
            return self._skip(f"empty frame of shape {image.shape}")
        try:
            l8 = to_l8(image)
        except ValueError as exc:  # unsupported dtype or channel count
            return self._skip(str(exc))
        header.stamp("prep")
        return Frame(header, image, l8)

    def _skip(self, why: str) -> None:
        self._unusable += 1
        self._count_skipped()
        if self._unusable == 1:
            log.warning("%s: skipping unusable frames (%s)", self.stream_id, why)
        return None

    def _count_skipped(self) -> None:
        self.stats.skipped = self._unusable + self._skipped_closed + self.capture.skipped

    def _retire_capture(self) -> None:
        self._skipped_closed += self.capture.skipped
        self.capture.close()

    def _hand_over(self, frame: Frame) -> bool:
        """Queue the frame: live queues drop their oldest, file queues wait for room.
        False when the pipeline is stopping or closed."""
        while True:
            with self._end_lock:
                if self._ended:
                    return False
                try:
                    if self.queue.put(frame, timeout=0.2):
                        return True
                except QueueClosed:
                    return False
            if self.stopping:
                return False

    def _pace(self, next_due: float, period: float) -> float:
        delay = next_due - time.monotonic()
        if delay > 0:
            self._stop_event.wait(delay)
            return next_due + period
        return time.monotonic() + period if delay < -period else next_due + period

    def _reopen(self) -> None:
        self._retire_capture()
        self.capture = open_capture(self.config)

    def _reconnect(self, first: bool = False) -> bool:
        """Reopen a lost live capture (or open one not up at start: `first`) with doubling
        delays; False if it stays away too long."""
        policy = self.config.reconnect
        self._retire_capture()
        self.capture = Disconnected(self.fps)
        lost_at, delay, attempt = time.monotonic(), policy.initial_delay_s, 0
        while True:
            waited = time.monotonic() - lost_at
            left = None if policy.give_up_after_s is None else policy.give_up_after_s - waited
            if left is not None and left <= 0:
                log.error("%s: camera did not %s within %g s; ending the stream",
                          self.stream_id, "come up" if first else "come back", policy.give_up_after_s)
                return False
            if self._stop_event.wait(delay if left is None else min(delay, left)):
                return False
            attempt += 1
            try:
                self.capture = open_capture(self.config)
            except SourceError as exc:
                # the wait was announced in one warning line; each attempt only with -v
                log.debug("%s: %s attempt %d failed: %s", self.stream_id, "connect" if first else "reconnect",
                          attempt, exc)
                delay = min(delay * 2, policy.max_delay_s)
                continue
            self.fps = self.capture.fps
            if first:
                log.warning("%s: camera connected after %.1f s (attempt %d)", self.stream_id,
                            time.monotonic() - lost_at, attempt)
                return True
            self.stats.reconnects += 1
            log.warning("%s: reconnected after %.1f s (attempt %d)", self.stream_id,
                        time.monotonic() - lost_at, attempt)
            return True

