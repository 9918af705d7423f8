"""Hints carried through a shot along the motion (engines.hints.HintCarrier) and through
`chromacast colorize` and the live pipeline's engine stage."""
from __future__ import annotations

import cv2
import numpy as np

from engines.hints import Hint, HintCarrier, rasterise


def texture(w: int = 160, h: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)


def test_carried_hint_follows_the_motion():
    scene = texture(200)
    carrier = HintCarrier()
    frames = [np.ascontiguousarray(scene[:, 40 - 4 * t:200 - 4 * t]) for t in range(6)]  # pans right
    maps = carrier.step(frames[0], rasterise([Hint(0.25, 0.3, 0.375, 0.6, 40.0, -30.0, radius=0)], 160, 96))
    x0 = np.flatnonzero(maps[1][0].any(0))[0]
    for t in range(1, 6):
        maps = carrier.step(frames[t], None)
    cols = np.flatnonzero(maps[1][0].any(0))
    assert abs(cols[0] - (x0 + 20)) <= 2  # moved with the content, 4 px a frame
    inside = maps[1][0] > 0
    assert np.allclose(maps[0][0][inside] * 110, 40.0) and np.allclose(maps[0][1][inside] * 110, -30.0)


def test_carried_hint_drops_where_the_content_changed_and_resets():
    carrier = HintCarrier()
    a, b = texture(seed=1), texture(seed=2)  # unrelated frames: a scene change the flow cannot follow
    carrier.step(a, rasterise([Hint(0.2, 0.2, 0.6, 0.8, 30.0, 30.0, radius=0)], 160, 96))
    assert carrier.active
    maps = carrier.step(b, None)
    kept = 0 if maps is None else maps[1].mean()
    assert kept < 0.05
    carrier.reset()
    assert not carrier.active and carrier.step(a, None) is None


def test_new_hints_are_laid_over_carried_ones_and_resume_exactly():
    frame = texture()
    carrier = HintCarrier()
    carrier.step(frame, rasterise([Hint(0.1, 0.1, 0.5, 0.5, 20.0, 0.0, radius=0)], 160, 96))
    maps = carrier.step(frame, rasterise([Hint(0.3, 0.3, 0.7, 0.7, -20.0, 10.0, radius=0)], 160, 96))
    assert maps[0][0, 20, 24] * 110 == np.float32(20.0) and np.isclose(maps[0][0, 40, 80] * 110, -20.0)
    other = HintCarrier()
    other.load_arrays(carrier.to_arrays())
    nxt = np.roll(frame, 2, axis=1)
    a, b = carrier.step(nxt, None), other.step(nxt, None)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
