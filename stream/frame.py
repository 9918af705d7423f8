"""A frame on its way through the pipeline, and the header that travels with it to subscribers."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def now_ns() -> int:
    """Wall-clock nanoseconds: comparable across processes on one machine, so a subscriber
    can measure end-to-end latency from the capture stamp."""
    return time.time_ns()


@dataclass(slots=True)
class FrameHeader:
    """What a subscriber learns about a frame besides its pixels.

    `stages` maps a stage name to the wall-clock ns at which the frame left that stage, in
    pipeline order (capture, prep, engine, publish). `epoch` counts the source's
    (re)connections and gaps: a change tells the state slots to start from zero, and survives
    dropped frames. `reset` is set by the engine stage on a frame whose recurrent state
    started from zero (new stream, new epoch, scene cut, eviction)."""

    stream: str
    seq: int
    capture_ns: int
    width: int
    height: int
    fps: float
    epoch: int = 0
    reset: bool = False
    stages: dict[str, int] = field(default_factory=dict)

    def stamp(self, stage: str) -> int:
        t = self.stages[stage] = now_ns()
        return t

    def latency_ms(self, stage: str | None = None) -> float:
        """Milliseconds from capture to `stage` (default: the last stage stamped)."""
        end = self.stages[stage] if stage else max(self.stages.values(), default=self.capture_ns)
        return (end - self.capture_ns) / 1e6


@dataclass(slots=True)
class Frame:
    """One captured frame. `image` is as captured (grey, BGR or BGRA; never copied),
    `l8` its full-resolution 8-bit L plane, `colour` the colorized BGR result."""

    header: FrameHeader
    image: np.ndarray
    l8: np.ndarray | None = None
    colour: np.ndarray | None = None
    ab: np.ndarray | None = None  # the network's low-resolution ab, until merged into `colour`
    l_net: np.ndarray | None = None  # `l8` at the network's input size, with `ab`
    hinted: bool = False  # fed with user colour hints: shown as the network gives it, not stabilised

    @property
    def stream(self) -> str:
        return self.header.stream


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Sent down the pipeline after a stream's last frame: frees its state, closes its files.
    `reason` is empty for a normal end, else one line saying why the stream stopped."""

    stream: str
    reason: str = ""
