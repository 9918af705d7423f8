"""Colour maths: fitting predicted chroma into sRGB keeps the input's lightness and hue."""
from __future__ import annotations

import cv2
import numpy as np

from engines.colour import fit_chroma_to_gamut, merge_l8_ab


def lightness_after_round_trip(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    lab = np.dstack([L, ab[0], ab[1]]).astype(np.float32)
    return cv2.cvtColor(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR), cv2.COLOR_BGR2Lab)[..., 0]


def test_chroma_is_shrunk_only_where_it_leaves_the_gamut_and_keeps_its_hue():
    rng = np.random.default_rng(0)
    L = rng.uniform(5, 95, (40, 60)).astype(np.float32)
    ab = rng.normal(0, 45, (2, 40, 60)).astype(np.float32)
    fits_before = np.abs(lightness_after_round_trip(L, ab) - L) <= 0.5
    assert 0.1 < fits_before.mean() < 0.9  # both kinds of pixel are there
    fitted = ab.copy()
    fit_chroma_to_gamut(L, fitted)
    assert np.array_equal(fitted[:, fits_before], ab[:, fits_before])  # what fits is left alone
    assert np.abs(lightness_after_round_trip(L, fitted) - L).max() <= 0.5  # now everything keeps its L
    scale = fitted[0][~fits_before] / ab[0][~fits_before]
    assert np.allclose(fitted[1][~fits_before], ab[1][~fits_before] * scale, atol=1e-4)  # same hue
    assert (scale < 1).all()
    # the largest scale that fits, to the bisection's step of 1/64: one step more does not fit
    grown = ab[:, ~fits_before] * np.minimum(scale + 1 / 64, 1)
    assert (np.abs(lightness_after_round_trip(L[~fits_before][None], grown[:, None]) - L[~fits_before]) > 0.5).all()


def test_merge_keeps_the_input_lightness_for_saturated_predictions():
    l8 = np.tile(np.linspace(20, 235, 64).astype(np.uint8), (48, 1))
    ab = np.zeros((2, 12, 16), np.float32)
    ab[0], ab[1] = 90, -90  # far outside sRGB for most lightness values
    merged = merge_l8_ab(l8, ab)
    lightness = cv2.cvtColor(merged, cv2.COLOR_BGR2Lab)[..., 0].astype(int)
    assert np.abs(lightness - l8).max() <= 3  # 8-bit rounding, not RGB clipping
    assert cv2.cvtColor(merged, cv2.COLOR_BGR2Lab)[..., 1:].astype(int).std() > 0  # still coloured
