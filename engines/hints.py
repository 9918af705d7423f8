"""User colour hints: points or boxes with a colour, rasterised to the network's hint inputs."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.colour import AB_SCALE


@dataclass(frozen=True)
class Hint:
    """A colour for a region of one frame, in frame-relative coordinates (0..1).

    A point is a box of zero size; it covers `radius` (relative to the short side,
    at least one network pixel) around (x0, y0)."""

    x0: float
    y0: float
    x1: float
    y1: float
    a: float  # Lab a*
    b: float  # Lab b*
    radius: float = 0.01

    @classmethod
    def point(cls, x: float, y: float, a: float, b: float, radius: float = 0.01) -> "Hint":
        return cls(x, y, x, y, a, b, radius)

    @classmethod
    def from_bgr(cls, x0: float, y0: float, x1: float, y1: float, bgr: tuple[int, int, int],
                 radius: float = 0.01) -> "Hint":
        """A hint whose colour is given as 8-bit BGR (its L is ignored: only a*, b* steer)."""
        px = np.array([[bgr]], np.float32) / 255.0
        _, a, b = cv2.cvtColor(px, cv2.COLOR_BGR2Lab)[0, 0]
        return cls(x0, y0, x1, y1, float(a), float(b), radius)


@dataclass(frozen=True, eq=False)
class DenseHint:
    """Colours on a coarse grid over the whole frame (a reference's matched colours):
    ab 2×gh×gw in Lab units, mask gh×gw (True where a colour is given). Unlike a user's
    Hint it is fed on every frame, so it does not restart the colour stabiliser."""

    ab: np.ndarray
    mask: np.ndarray


def user_hinted(hints: list | None) -> bool:
    """Whether a frame's hints include a user's (point or box) hint."""
    return bool(hints) and any(isinstance(h, Hint) for h in hints)


def rasterise(hints: list[Hint | DenseHint], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(hint_ab 2×h×w as ab/AB_SCALE, hint_mask 1×h×w) for the network input size.
    Later hints win where they overlap: dense ones come first, so a user's hint stays on top."""
    ab = np.zeros((2, height, width), np.float32)
    mask = np.zeros((1, height, width), np.float32)
    short = min(width, height)
    for h in hints:
        if isinstance(h, DenseHint):
            on = cv2.resize(h.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
            for c in range(2):
                ab[c][on] = cv2.resize(h.ab[c], (width, height), interpolation=cv2.INTER_NEAREST)[on] / AB_SCALE
            mask[0][on] = 1.0
            continue
        r = max(h.radius * short, 0.5)
        x0 = int(np.floor(min(h.x0, h.x1) * width - r + 0.5))
        x1 = int(np.ceil(max(h.x0, h.x1) * width + r - 0.5))
        y0 = int(np.floor(min(h.y0, h.y1) * height - r + 0.5))
        y1 = int(np.ceil(max(h.y0, h.y1) * height + r - 0.5))
        x0, y0 = max(0, min(x0, width - 1)), max(0, min(y0, height - 1))
        x1, y1 = max(x0 + 1, min(x1, width)), max(y0 + 1, min(y1, height))
        ab[0, y0:y1, x0:x1] = h.a / AB_SCALE
        ab[1, y0:y1, x0:x1] = h.b / AB_SCALE
        mask[0, y0:y1, x0:x1] = 1.0
    return ab, mask


HintMaps = tuple[np.ndarray, np.ndarray]  # (hint_ab 2×h×w as ab/AB_SCALE, hint_mask 1×h×w) at network size


class HintCarrier:
    """One stream's hints carried through a shot along the motion of the input.

    Fed on one frame only, a hint fades as the recurrent state forgets it. Instead, the hint
    maps of the frame they were given on are moved onto every following frame along the
    optical flow of the network's input L (OpenCV DIS) and fed again, so a hinted region keeps
    its colour while it moves. Where the moved L no longer matches the frame (the region was
    covered, the flow is wrong), the hint is dropped there; at a scene cut or when the hints
    are cleared, the caller resets it. New hints on a later frame are laid over the carried ones."""

    def __init__(self, tolerance: float = 8.0, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST):
        self.tolerance = tolerance
        self._dis = cv2.DISOpticalFlow_create(preset)
        self._l: np.ndarray | None = None  # previous network-size L (uint8)
        self._maps: HintMaps | None = None

    @property
    def active(self) -> bool:
        return self._maps is not None

    def reset(self) -> None:
        self._l = self._maps = None

    def step(self, l_net: np.ndarray, new: HintMaps | None) -> HintMaps | None:
        """The hint maps to feed with this frame (network-size L `l_net`), given the new ones
        for it (None: none new)."""
        carried = None
        if self._maps is not None and self._l is not None and self._l.shape == l_net.shape:
            carried = self._move(l_net)
        if new is not None:
            if carried is None:
                carried = (new[0].copy(), new[1].copy())
            else:
                on = new[1][0] > 0
                carried[0][:, on] = new[0][:, on]
                carried[1][:, on] = new[1][:, on]
        self._l = l_net
        self._maps = carried if carried is not None and carried[1].any() else None
        return self._maps

    def _move(self, l_net: np.ndarray) -> HintMaps:
        h, w = l_net.shape
        flow = self._dis.calc(l_net, self._l, None)  # where each current pixel was before
        flow += np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        ab, mask = self._maps
        moved_ab = np.stack([cv2.remap(c, flow, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
                             for c in ab])
        moved_mask = cv2.remap(mask[0], flow, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        prev_l = cv2.remap(self._l, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # judged over a neighbourhood: one pixel's L can match by chance where the flow is wrong
        diff = cv2.absdiff(prev_l, l_net).astype(np.float32)
        mismatch = cv2.blur(diff, (7, 7)) * (100 / 255) > self.tolerance
        moved_mask[mismatch] = 0
        return moved_ab, moved_mask[None]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the next frame needs, e.g. to resume a long job exactly (empty when inactive)."""
        if self._maps is None or self._l is None:
            return {}
        return {"hints_l_net": self._l, "hints_ab": self._maps[0], "hints_mask": self._maps[1]}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self._l = np.ascontiguousarray(arrays["hints_l_net"], np.uint8)
            self._maps = (np.ascontiguousarray(arrays["hints_ab"], np.float32),
                          np.ascontiguousarray(arrays["hints_mask"], np.float32))
        except KeyError:
            self.reset()
