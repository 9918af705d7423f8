"""Counters and latency of a running pipeline, and the summary printed at the end.

Each counter has one writer thread (frames_in, dropped, skipped, reconnects: the stream's
ingest thread; frames_out and latency: the output stage), so no locks are needed.
Latency is capture → publish (or capture → colorized without a publisher), from the frame
headers, kept for the most recent frames in a fixed ring so memory stays flat on long runs.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stream.frame import FrameHeader


@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0  # live: waiting frames replaced by newer ones
    skipped: int = 0  # undecodable or unusable frames left out
    reconnects: int = 0
    ended: str | None = None  # why the stream ended ("" for a normal end)


@dataclass
class Summary:
    frames_in: int
    frames_out: int
    dropped: int
    skipped: int
    reconnects: int
    seconds: float
    fps: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    streams: dict[str, StreamStats] = field(default_factory=dict)

    def line(self) -> str:
        latency = ("latency p50 n/a" if self.latency_p50_ms is None else
                   f"latency p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms")
        extra = "".join(f", {n} {what}" for n, what in ((self.skipped, "skipped"), (self.reconnects, "reconnects"))
                        if n)
        return (f"frames in {self.frames_in}, out {self.frames_out}, dropped {self.dropped}{extra}; "
                f"{self.seconds:.1f} s, {self.fps:.1f} fps; {latency}")


class Stats:
    def __init__(self, latency_samples: int = 100000):
        self.streams: dict[str, StreamStats] = {}
        self._latency = np.zeros(latency_samples, np.float32)
        self._count = 0
        self._first_in: float | None = None
        self._last_out: float | None = None
        # called on the output thread with each frame and its end stamp (metrics histograms); keep them cheap
        self.listeners: list[Callable[[FrameHeader, int], None]] = []

    def stream(self, stream_id: str) -> StreamStats:
        stats = self.streams.get(stream_id)
        if stats is None:
            stats = self.streams[stream_id] = StreamStats()
        return stats

    def frame_in(self, stream: StreamStats) -> None:
        if self._first_in is None:
            self._first_in = time.monotonic()
        stream.frames_in += 1

    def frame_out(self, header: FrameHeader, end_ns: int) -> None:
        self.stream(header.stream).frames_out += 1
        self._latency[self._count % len(self._latency)] = (end_ns - header.capture_ns) / 1e6
        self._count += 1
        self._last_out = time.monotonic()
        for listener in self.listeners:
            listener(header, end_ns)

    def summary(self) -> Summary:
        per = list(self.streams.values())
        frames_out = sum(s.frames_out for s in per)
        seconds = ((self._last_out or time.monotonic()) - self._first_in) if self._first_in else 0.0
        samples = self._latency[: min(self._count, len(self._latency))]
        p50 = p99 = None
        if len(samples):
            p50, p99 = (float(v) for v in np.percentile(samples, (50, 99)))
        return Summary(sum(s.frames_in for s in per), frames_out, sum(s.dropped for s in per),
                       sum(s.skipped for s in per), sum(s.reconnects for s in per), seconds,
                       frames_out / seconds if seconds > 0 else 0.0, p50, p99, dict(self.streams))

    def report(self) -> str:
        """The summary: one line in all, then one per stream when there are several."""
        summary = self.summary()
        lines = [summary.line()]
        if len(summary.streams) > 1:
            for name, s in summary.streams.items():
                extra = "".join(f", {n} {what}" for n, what in ((s.skipped, "skipped"),
                                                               (s.reconnects, "reconnects")) if n)
                ended = f" (ended: {s.ended})" if s.ended else ""
                lines.append(f"  {name}: in {s.frames_in}, out {s.frames_out}, dropped {s.dropped}{extra}{ended}")
        return "\n".join(lines)
