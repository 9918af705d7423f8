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
