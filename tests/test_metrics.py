"""Quality metrics against answers known in closed form."""
import math

import cv2
import numpy as np
import pytest

from engines import metrics


def textured_frame(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (DIS needs structure to lock on to)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (5, 5), 0)


def test_psnr_of_known_noise():
    rng = np.random.default_rng(1)
    ref = rng.integers(20, 236, (64, 64, 3)).astype(np.uint8)
    noisy = (ref.astype(np.int16) + rng.choice([-10, 10], ref.shape)).astype(np.uint8)  # MSE exactly 100
    assert metrics.psnr(noisy, ref) == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-9)


def test_psnr_does_not_wrap_uint8():
    a = np.full((8, 8, 3), 10, np.uint8)
    b = np.full((8, 8, 3), 20, np.uint8)  # a - b in uint8 wraps to 246: PSNR would be ~0 dB
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert metrics.psnr(a, a) == float("inf")


def test_colourfulness_of_grey_is_zero_and_of_flat_colour_known():
    grey = np.repeat(np.random.default_rng(2).integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    assert metrics.colourfulness(grey) == pytest.approx(0.0, abs=1e-12)
    red_bgr = np.zeros((4, 4, 3), np.uint8)
    red_bgr[..., 2] = 200  # R=200: rg = 200, yb = 100, no spread → 0.3 · sqrt(200² + 100²)
    assert metrics.colourfulness(red_bgr) == pytest.approx(0.3 * math.hypot(200, 100))
    assert metrics.colourfulness(red_bgr[..., ::-1], order="rgb") == pytest.approx(0.3 * math.hypot(200, 100))
    blue_bgr = red_bgr[..., ::-1].copy()
    assert metrics.colourfulness(blue_bgr) == pytest.approx(0.3 * 200)  # rg = 0, |yb| = 200


def test_colourfulness_absolute_and_signed_opponents():
    # half pure red, half pure green (BGR): rg = ±200, yb = +100 everywhere
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, :, 2] = 200
    img[1, :, 1] = 200
    assert metrics.colourfulness(img) == pytest.approx(0.3 * math.hypot(200, 100))  # |rg| = 200 throughout
    assert metrics.colourfulness(img, absolute=False) == pytest.approx(200 + 0.3 * 100)  # σ_rg 200, μ_rg 0


def test_js_divergence_identical_and_disjoint():
    p = np.array([1.0, 2.0, 3.0, 0.0])
    assert metrics.js_divergence(p, 2 * p) == pytest.approx(0.0, abs=1e-15)
    assert metrics.js_divergence([1, 1, 0, 0], [0, 0, 1, 1]) == pytest.approx(math.log(2))  # natural log
    assert 0 < metrics.js_divergence([1, 1, 0, 0], [0, 1, 1, 0]) < math.log(2)


def test_cdc_static_sequence_zero_and_flicker_positive():
    frame = textured_frame()
    assert metrics.cdc([frame] * 6) == 0.0
    dark, bright = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    # alternating disjoint frames: gap 1 pairs give ln 2, gaps 2 and 4 give 0
    assert metrics.cdc([dark, bright] * 3) == pytest.approx(math.log(2) / 3)
    assert math.isnan(metrics.cdc([frame]))


def test_warp_error_zero_for_static_sequence():
    frame = textured_frame()
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    pairs = metrics.dis_flow_pairs([grey] * 4)
    assert all(p.valid.mean() > 0.95 for p in pairs)
    assert metrics.warp_error([frame] * 4, pairs) == pytest.approx(0.0, abs=1e-6)


def test_warp_error_follows_motion_and_catches_flicker():
    base = textured_frame(96, 160, seed=3)
    frames = [np.ascontiguousarray(base[:, 2 * t:2 * t + 128]) for t in range(5)]  # pans 2 px per frame
    greys = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    pairs = metrics.dis_flow_pairs(greys)
    steady = metrics.warp_error(frames, pairs)
    flicker = [cv2.add(f, np.full_like(f, 40)) if t % 2 else f for t, f in enumerate(frames)]
    # a frame-to-frame brightness flicker of 40/255 would cost about (40/255)^2 = 0.0246
    assert steady < 1e-4
    assert metrics.warp_error(flicker, pairs) > 10 * steady
    assert metrics.warp_error(flicker, pairs) > 0.015


def test_forward_backward_check_masks_occlusion():
    frame = textured_frame(seed=4)
    nxt = frame.copy()
    nxt[30:70, 40:90] = textured_frame(seed=5)[30:70, 40:90]  # new content appears: no match
    g0, g1 = (cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in (frame, nxt))
    pair = metrics.dis_flow_pairs([g0, g1])[0]
    assert pair.valid[:20].mean() > 0.9  # untouched top rows are kept
    assert pair.valid[30:70, 40:90].mean() < 0.5  # most of the replaced region is masked
