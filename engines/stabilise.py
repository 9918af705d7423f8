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

Everything runs at the network's ab resolution, except the flow (OpenCV's DIS, ultrafast
preset, on the network's own input L, which callers resize once for both); its cost on
a pipeline: `chromacast bench --stabiliser 0` against the default.
A stream's stabiliser restarts with its recurrent state (first frame, scene cut, gap) and
on a frame fed with user colour hints, so a hint shows at once and is carried from there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger("chromacast.stabilise")

L_UNITS_PER_LEVEL = np.float32(100 / 255)


@dataclass(frozen=True)
class StabiliserSettings:
    strength: float = 0.8  # weight of the carried colours where the motion is trusted; 0: off
    tolerance: float = 10.0  # L difference (0–100) at which the weight falls to 1/e of strength

    def __post_init__(self):
        if not 0 <= self.strength < 1:
            raise ValueError(f"stabiliser strength must be in [0, 1), got {self.strength}")
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
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._grid: np.ndarray | None = None  # h×w×2 pixel coordinates
        self._l_net: np.ndarray | None = None  # previous L at network size (uint8), for the flow
        self._l_ab: np.ndarray | None = None  # previous L at ab size (float32, L units)
        self._ab: np.ndarray | None = None  # previous stabilised ab, h×w×2 float32

    def reset(self) -> None:
        self._l_net = self._l_ab = self._ab = None

    def apply(self, l_net: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """Stabilise `ab` (2×h×w float32, Lab units: the network's output) in place and return
        it. `l_net`: the network's input, the frame's 8-bit L plane at (w, h) · ab_stride
        (engines.colour.network_l8)."""
        if not self.settings.enabled:
            return ab
        h, w = ab.shape[1:]
        if l_net.shape != (h * self.ab_stride, w * self.ab_stride):
            raise ValueError(f"L plane {l_net.shape} is not the network input for ab {ab.shape[1:]}")
        l_ab = cv2.resize(l_net, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        l_ab *= L_UNITS_PER_LEVEL
        if self._ab is not None and self._ab.shape[:2] == (h, w):
            self._blend(l_net, l_ab, ab)
        self._l_net, self._l_ab = l_net, l_ab
        self._ab = np.ascontiguousarray(ab.transpose(1, 2, 0))
        return ab

    def _blend(self, l_net: np.ndarray, l_ab: np.ndarray, ab: np.ndarray) -> None:
        h, w = l_ab.shape
        # where each current pixel was in the previous frame
        flow = self._dis.calc(l_net, self._l_net, None)
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA)
        flow *= np.float32(1 / self.ab_stride)
        if self._grid is None or self._grid.shape[:2] != (h, w):
            self._grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        flow += self._grid  # now an absolute map (x, y) into the previous frame
        map_x, map_y = flow[..., 0], flow[..., 1]
        prev_l = cv2.remap(self._l_ab, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        prev_ab = cv2.remap(self._ab, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        s = self.settings
        prev_l -= l_ab
        prev_l *= np.float32(1 / s.tolerance)
        weight = np.exp(-np.square(prev_l, out=prev_l), out=prev_l)
        weight *= np.float32(s.strength)
        # colours from outside the previous frame are not carried
        weight[(map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)] = 0
        for c in range(2):
            ab[c] += weight * (prev_ab[..., c] - ab[c])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the next frame needs (empty after a reset), e.g. to resume a long job exactly."""
        if self._ab is None:
            return {}
        return {"stabiliser_l_net": self._l_net, "stabiliser_l_ab": self._l_ab, "stabiliser_ab": self._ab}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Back to what to_arrays() returned (a missing part: start fresh)."""
        try:
            self._l_net = np.ascontiguousarray(arrays["stabiliser_l_net"], np.uint8)
            self._l_ab = np.ascontiguousarray(arrays["stabiliser_l_ab"], np.float32)
            self._ab = np.ascontiguousarray(arrays["stabiliser_ab"], np.float32)
        except KeyError:
            self.reset()


class Stabilisers:
    """The stabilisers of many streams, keyed by stream id (the pipeline's output thread)."""

    def __init__(self, settings: StabiliserSettings, ab_stride: int):
        self.settings, self.ab_stride = settings, ab_stride
        self._streams: dict[str, ColourStabiliser] = {}

    def apply(self, stream_id: str, l_net: np.ndarray, ab: np.ndarray, restart: bool) -> np.ndarray:
        """`restart`: the stream's recurrent state started from zero with this frame, or the
        frame was fed with hints (its colours are taken as they are)."""
        stabiliser = self._streams.get(stream_id)
        if stabiliser is None:
            stabiliser = self._streams[stream_id] = ColourStabiliser(self.settings, self.ab_stride)
        elif restart:
            stabiliser.reset()
        return stabiliser.apply(l_net, ab)

    def end(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    @property
    def stream_count(self) -> int:
        return len(self._streams)
