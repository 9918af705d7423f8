"""Scene-cut detection on the grey input, so a shot's recurrent state never leaks into the next.

A cut is a frame that differs from the previous one both in layout and in tones:
the mean absolute difference of small L thumbnails (layout) and the distance
between their L histograms (tones). Motion moves pixels but keeps the histogram;
a fade or a flash changes tones smoothly or briefly. Taking the geometric mean of
the two measures lets a cut through only when both agree.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_SCENE_THRESHOLD = 0.2  # on cut_score's 0..1 scale; hard cuts score 0.3..0.8, motion < 0.1
THUMB_WIDTH = 64
HIST_BINS = 32


def thumbnail(l8: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """A small float32 copy of an 8-bit L plane (aspect kept), scaled to 0..1."""
    h, w = l8.shape
    size = (min(width, w), max(1, round(h * min(width, w) / w)))
    small = cv2.resize(l8, size, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


def cut_score(previous: np.ndarray, current: np.ndarray) -> float:
    """0 (same picture) .. 1 (nothing in common) between two thumbnails of one size."""
    layout = float(np.mean(np.abs(current - previous)))
    h0, _ = np.histogram(previous, HIST_BINS, (0.0, 1.0))
    h1, _ = np.histogram(current, HIST_BINS, (0.0, 1.0))
    tones = 0.5 * float(np.abs(h0 - h1).sum()) / previous.size
    # layout alone rarely passes 0.5 even for unrelated pictures: scale it to use the range
    return float(np.sqrt(min(1.0, 2.0 * layout) * tones))


class SceneCutDetector:
    """Feed every frame's L plane in order; `update` says whether that frame starts a new shot.

    A threshold of 0 or less turns detection off (one shot for the whole video);
    the first frame is never called a cut (the state is fresh there anyway)."""

    def __init__(self, threshold: float = DEFAULT_SCENE_THRESHOLD):
        self.threshold = threshold
        self._previous: np.ndarray | None = None
        self.last_score = 0.0

    def update(self, l8: np.ndarray) -> bool:
        current = thumbnail(l8)
        previous, self._previous = self._previous, current
        if previous is None or previous.shape != current.shape or self.threshold <= 0:
            self.last_score = 0.0
            return False
        self.last_score = cut_score(previous, current)
        return self.last_score > self.threshold
