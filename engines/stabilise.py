"""Flow-guided colour stabiliser: a stream's previous colours carried along the motion.

The network's recurrent state steadies colours, but small per-frame changes of ab
remain and read as flicker. After the network, each frame's ab is blended with the
previous frame's (stabilised) ab, moved onto the current frame along the optical flow
of the input L:

    ab_t = ab_net + w · (warp(ab_{t-1}) − ab_net),   w = strength · exp(−(ΔL / tolerance)²)

where ΔL is how far the previous L, moved the same way, is from the current L (in L
units, 0–100): where the flow is wrong, something was uncovered or the scene changed, ΔL
is large and the network's own colours win. Along a steady motion the blend is a running
average of the network's colours, so flicker fades and nothing lags far behind.

Everything runs at the network's input size: the flow (OpenCV's DIS, fast preset by
default, on the network's own input L, which callers resize once for both), and the carried
colours, the network's ab upsampled once: carried at the ab size, each frame's resampling
along the flow would blur them a little more. Its cost on a pipeline: `chromacast bench
--stabiliser 0` against the default.
A stream's stabiliser restarts with its recurrent state (first frame, scene cut, gap) and
on a frame fed with user colour hints, so a hint shows at once and is carried from there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger("chromacast.stabilise")

L_UNITS_PER_LEVEL = np.float32(100 / 255)
FLOW_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass(frozen=True)
class StabiliserSettings:
    strength: float = 0.85  # weight of the carried colours where the motion is trusted; 0: off
    tolerance: float = 10.0  # L difference (0–100) at which the weight falls to 1/e of strength
    flow: str = "fast"  # DIS preset (FLOW_PRESETS): finer flow carries colours more exactly, at a cost

    def __post_init__(self):
        if not 0 <= self.strength < 1:
            raise ValueError(f"stabiliser strength must be in [0, 1), got {self.strength}")
        if self.flow not in FLOW_PRESETS:
            raise ValueError(f"stabiliser flow must be one of {', '.join(FLOW_PRESETS)}, got {self.flow!r}")
        if self.tolerance <= 0:
            raise ValueError(f"stabiliser tolerance must be positive, got {self.tolerance}")

    @property
    def enabled(self) -> bool:
        return self.strength > 0


def usable_settings(settings: StabiliserSettings, engine) -> StabiliserSettings | None:
    """`settings` where `engine` (engines.backend.Engine) can be stabilised, else None: off,
    or an engine that merges on the GPU, whose ab never reaches the host (logged)."""
    if not settings.enabled:
        return None
    if engine.merges_on_device:
        log.info("colour stabiliser off: the %s engine merges on the GPU", engine.name)
        return None
    return settings


class ColourStabiliser:
    """One stream's stabiliser; frames must come in stream order."""

    def __init__(self, settings: StabiliserSettings, ab_stride: int):
        self.settings, self.ab_stride = settings, ab_stride
        self._dis = cv2.DISOpticalFlow_create(FLOW_PRESETS[settings.flow])
        self._grid: np.ndarray | None = None  # H×W×2 pixel coordinates
        self._l_net: np.ndarray | None = None  # previous L at network size (uint8), for the flow
        self._l: np.ndarray | None = None  # previous L at network size (float32, L units)
        self._ab: np.ndarray | None = None  # previous stabilised ab, H×W×2 float32 at network size

    def reset(self) -> None:
        self._l_net = self._l = self._ab = None

    def apply(self, l_net: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """The stabilised ab (2×H×W float32, Lab units) at the network's input size, for
        `ab` (2×h×w: the network's output) and `l_net`, the network's input: the frame's
        8-bit L plane at (w, h) · ab_stride (engines.colour.network_l8); a new array, ready
        for engines.colour.merge_l8_ab (which clips it in place). Off, or on the first frame
        after a (re)start: `ab` itself."""
        if not self.settings.enabled:
            return ab
        h, w = ab.shape[1:]
        size = (w * self.ab_stride, h * self.ab_stride)
        if l_net.shape != size[::-1]:
            raise ValueError(f"L plane {l_net.shape} is not the network input for ab {ab.shape[1:]}")
        # carried at the network size: at ab size every frame's resampling along the flow
        # would blur the carried colours a little more, and muting builds up
        cur = cv2.resize(ab.transpose(1, 2, 0), size, interpolation=cv2.INTER_LINEAR)
        l_cur = l_net.astype(np.float32)
        l_cur *= L_UNITS_PER_LEVEL
        fresh = self._ab is None or self._ab.shape != cur.shape
        if not fresh:
            self._blend(l_net, l_cur, cur)
        self._l_net, self._l, self._ab = l_net, l_cur, cur
        if fresh:  # nothing carried yet: the network's own ab, exactly as without the stabiliser
            return ab
        return np.ascontiguousarray(cur.transpose(2, 0, 1))  # planar, and apart from what is kept

    def _blend(self, l_net: np.ndarray, l_cur: np.ndarray, ab: np.ndarray) -> None:
        h, w = l_cur.shape
        # where each current pixel was in the previous frame
        flow = self._dis.calc(l_net, self._l_net, None)
        if self._grid is None or self._grid.shape[:2] != (h, w):
            self._grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        flow += self._grid  # now an absolute map (x, y) into the previous frame
        map_x, map_y = flow[..., 0], flow[..., 1]
        prev_l = cv2.remap(self._l, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        prev_ab = cv2.remap(self._ab, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        s = self.settings
        prev_l -= l_cur
        prev_l *= np.float32(1 / s.tolerance)
        weight = np.exp(-np.square(prev_l, out=prev_l), out=prev_l)
        weight *= np.float32(s.strength)
        # colours from outside the previous frame are not carried
        weight[(map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)] = 0
        prev_ab -= ab
        prev_ab *= weight[..., None]
        ab += prev_ab

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the next frame needs (empty after a reset), e.g. to resume a long job exactly."""
        if self._ab is None:
            return {}
        return {"stabiliser_l_net": self._l_net, "stabiliser_l": self._l, "stabiliser_ab": self._ab}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Back to what to_arrays() returned (a missing part: start fresh)."""
        try:
            self._l_net = np.ascontiguousarray(arrays["stabiliser_l_net"], np.uint8)
            self._l = np.ascontiguousarray(arrays["stabiliser_l"], np.float32)
            self._ab = np.ascontiguousarray(arrays["stabiliser_ab"], np.float32)
        except KeyError:
            self.reset()


class Stabilisers:
    """The stabilisers of many streams, keyed by stream id (the pipeline's output thread)."""

    def __init__(self, settings: StabiliserSettings, ab_stride: int):
        self.settings, self.ab_stride = settings, ab_stride
        self._streams: dict[str, ColourStabiliser] = {}
        self._last_used: dict[str, float] = {}

    def apply(self, stream_id: str, l_net: np.ndarray, ab: np.ndarray, restart: bool) -> np.ndarray:
        """`restart`: the stream's recurrent state started from zero with this frame, or the
        frame was fed with hints (its colours are taken as they are)."""
        stabiliser = self._streams.get(stream_id)
        if stabiliser is None:
            stabiliser = self._streams[stream_id] = ColourStabiliser(self.settings, self.ab_stride)
        elif restart:
            stabiliser.reset()
        self._last_used[stream_id] = time.monotonic()
        return stabiliser.apply(l_net, ab)

    def end(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)
        self._last_used.pop(stream_id, None)

    def evict_idle(self, idle_s: float) -> list[str]:
        """Free the stabilisers of streams without a frame for `idle_s` (as the state slots do:
        such a stream restarts from zero when it comes back)."""
        limit = time.monotonic() - idle_s
        idle = [sid for sid, used in self._last_used.items() if used < limit]
        for sid in idle:
            self.end(sid)
        return idle

    @property
    def stream_count(self) -> int:
        return len(self._streams)
