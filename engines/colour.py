"""Colour maths shared by every engine: CIE Lab split/merge, the ab bins, annealed mean.

OpenCV does the Lab conversions: it is already in the stack, is vectorised C++,
and its 8-bit Lab layout (L scaled to 0..255, a/b offset by 128) lets the hot path
stay in uint8 until the network input.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

AB_GRID = 10.0  # bin spacing in Lab units (Zhang et al. ECCV16)
AB_RANGE = 110.0  # bins cover [-110, 110] on a and b
AB_SCALE = 110.0  # hint ab are fed to the network as ab / AB_SCALE
DEFAULT_TEMPERATURE = 0.38  # annealed-mean temperature (logit scale 1/T = 2.63)
SIZE_MULTIPLE = 32  # network input sides are multiples of the encoder's total stride


def to_l8(frame: np.ndarray) -> np.ndarray:
    """Full-resolution L channel of any frame, in OpenCV's 8-bit Lab scale (L*255/100).

    Accepts grey (H×W or H×W×1), BGR and BGRA, uint8 or uint16. Grey input is
    already L-like, so it skips the colour conversion (the common case for
    black-and-white sources)."""
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"unsupported frame dtype {frame.dtype}; expected uint8 or uint16")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.LUT(frame, _grey_to_l8_lut())  # ~8x faster than numpy fancy indexing, GIL released
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"unsupported frame shape {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2Lab)[:, :, 0]


@lru_cache(maxsize=1)
def _grey_to_l8_lut() -> np.ndarray:
    """L of a neutral grey depends on its value alone: a 256-entry table replaces cvtColor."""
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
    return cv2.cvtColor(grey, cv2.COLOR_BGR2Lab)[:, 0, 0].copy()


def network_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Network input (w, h) for a frame: short side scaled to `short_side`, aspect kept,
    both sides rounded to a multiple of SIZE_MULTIPLE."""
    scale = short_side / min(width, height)

    def snap(v: float) -> int:
        return max(SIZE_MULTIPLE, int(round(v / SIZE_MULTIPLE)) * SIZE_MULTIPLE)

    return snap(width * scale), snap(height * scale)


def network_l8(l8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 8-bit L plane at the network's input size (w, h); itself when it is that size already."""
    return cv2.resize(l8, size, interpolation=cv2.INTER_AREA) if l8.shape[::-1] != tuple(size) else l8


def l8_to_network(l8: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Resize the 8-bit L plane to the network size and normalise to (L*-50)/50 in [-1, 1].

    `out` (h×w float32) is filled in place when given, so a caller can write
    straight into its batch buffer."""
    small = network_l8(l8, size)
    if out is None:
        out = np.empty(small.shape, np.float32)
    # l8 = L* * 255/100, so (L*-50)/50 = l8/127.5 - 1
    np.multiply(small, np.float32(1 / 127.5), out=out, dtype=np.float32)
    out -= 1.0
    return out


MAX_SATURATION = 2.0


def scale_chroma(ab: np.ndarray, saturation: float) -> np.ndarray:
    """ab with its chroma scaled by `saturation` (0: grey, 1: unchanged, up to 2), at the ab's own
    (low) resolution; the merge then fits the result into the gamut, and L is never touched."""
    if saturation == 1.0:
        return ab
    return ab * np.float32(saturation)


def merge_l8_ab(l8: np.ndarray, ab: np.ndarray, l_small: np.ndarray | None = None) -> np.ndarray:
    """Full-resolution BGR uint8 from the input's L and the network's low-resolution ab.

    `ab` is 2×h×w float in Lab units (changed in place). It is fitted into the gamut and
    quantised at its own resolution, upsampled to the frame size and merged with the
    untouched L; only the upsample, the merge and one 8-bit Lab → BGR run at full size.
    `l_small`: network_l8(l8, (w, h)) when the caller has it already (a stabilised ab is
    at the network's input size), which saves the one resize of the full frame here."""
    h, w = l8.shape
    ah, aw = ab.shape[1:]
    if l_small is None or l_small.shape != (ah, aw):
        l_small = network_l8(l8, (aw, ah))
    fit_chroma_to_gamut(l_small.astype(np.float32) * np.float32(100 / 255), ab)
    # 3 channels at low resolution (L a placeholder): the upsample then writes the final layout
    # in one pass and L goes in with one more, instead of a merge of strided channel views
    small = np.zeros((ah, aw, 3), np.uint8)
    ab += 128.0
    np.clip(ab, 0, 255, out=ab)
    small[..., 1], small[..., 2] = ab[0], ab[1]  # truncated, as the 8-bit Lab range needs
    lab = small if (ah, aw) == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    cv2.mixChannels([np.ascontiguousarray(l8)], [lab], [0, 0])
    return cv2.cvtColor(lab, cv2.COLOR_Lab2BGR, dst=lab)


# OpenCV's sRGB (D65) constants: XYZ → linear RGB and the white point
_XYZ_TO_RGB = np.array([[3.240479, -1.53715, -0.498535], [-0.969256, 1.875991, 0.041556],
                        [0.055648, -0.204043, 1.057311]], np.float32)
_WHITE_X, _WHITE_Z = np.float32(0.950456), np.float32(1.088754)
# linear RGB this far outside [0, 1] moves L by at most 903.3 × 2e-4 = 0.18 when clipped
_SURELY_INSIDE = np.float32(2e-4)


def _surely_keeps_lightness(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel: is (L, a, b) so nearly inside sRGB that the round trip of _keeps_lightness
    passes for sure? Plain Lab → linear RGB formulas, a few passes, no gamma."""
    def finv(t: np.ndarray) -> np.ndarray:
        return np.where(t > np.float32(6 / 29), t * t * t, (t - np.float32(16 / 116)) * np.float32(1 / 7.787))

    fy = (L + np.float32(16)) * np.float32(1 / 116)
    y = np.where(L > 8, fy * fy * fy, L * np.float32(1 / 903.3))
    x = finv(fy + a * np.float32(1 / 500)) * _WHITE_X
    z = finv(fy - b * np.float32(1 / 200)) * _WHITE_Z
    ok = np.ones(L.shape, bool)
    for row in _XYZ_TO_RGB:
        c = row[0] * x + row[1] * y + row[2] * z
        ok &= (c >= -_SURELY_INSIDE) & (c <= 1 + _SURELY_INSIDE)
    return ok


def fit_chroma_to_gamut(L: np.ndarray, ab: np.ndarray, iterations: int = 6, tolerance: float = 0.5) -> None:
    """Scale ab down (in place, per pixel) where (L, ab) lies outside sRGB.

    Converting an out-of-gamut colour clips RGB and so changes its lightness; shrinking
    the chroma instead keeps the input's L, as the product promises. A cheap test passes
    most pixels; OpenCV's round trip decides the rest, then a few bisection steps scale
    those that do not fit."""
    doubtful = ~_surely_keeps_lightness(L, ab[0], ab[1])
    if not doubtful.any():
        return
    where = np.nonzero(doubtful)
    # a column, as the bisection always had: OpenCV's SIMD rows differ from it by up to 0.01 in L
    lab = np.empty((len(where[0]), 1, 3), np.float32)
    lab[:, 0, 0], lab[:, 0, 1], lab[:, 0, 2] = L[where], ab[0][where], ab[1][where]
    outside = ~_keeps_lightness(lab, tolerance)[:, 0]
    if not outside.any():
        return
    # bisect the scale only where the colour does not fit: usually a small share of the frame
    where = (where[0][outside], where[1][outside])
    lab = lab[outside]
    a, b = lab[:, 0, 1].copy(), lab[:, 0, 2].copy()
    lo, hi = np.zeros(len(a), np.float32), np.ones(len(a), np.float32)
    for _ in range(iterations):
        mid = (lo + hi) * 0.5
        lab[:, 0, 1], lab[:, 0, 2] = a * mid, b * mid
        ok = _keeps_lightness(lab, tolerance)[:, 0]
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    ab[0][where] = a * lo
    ab[1][where] = b * lo


def _keeps_lightness(lab: np.ndarray, tolerance: float) -> np.ndarray:
    """Per pixel: does the Lab colour come back from sRGB with its L (within tolerance)?"""
    back = cv2.cvtColor(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR), cv2.COLOR_BGR2Lab)
    return np.abs(back[..., 0] - lab[..., 0]) <= tolerance


def bgr_to_lab_float(bgr: np.ndarray) -> np.ndarray:
    """H×W×3 float32 Lab (L in [0,100], ab in Lab units) of a uint8 BGR image."""
    return cv2.cvtColor(bgr.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab)


def lab_float_to_bgr(lab: np.ndarray) -> np.ndarray:
    """uint8 BGR of an H×W×3 float Lab image (ab clipped to the representable range)."""
    lab = lab.astype(np.float32, copy=True)
    np.clip(lab[..., 0], 0, 100, out=lab[..., 0])
    np.clip(lab[..., 1:], -127, 127, out=lab[..., 1:])
    bgr = cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)
    return np.clip(bgr * 255 + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def gamut_bins() -> np.ndarray:
    """Centres (Q×2, a then b) of the ab bins that sRGB colours occupy.

    Every 8-bit sRGB colour is converted to Lab and its ab assigned to the nearest
    point of a grid of AB_GRID over [-AB_RANGE, AB_RANGE]; the occupied points are
    the bins. With OpenCV's D65 Lab this gives Q = 262. Zhang et al. list 313 from
    their own gamut estimate; nothing here depends on Q, and official models bring
    their own bin centres."""
    # every second level (plus 255) finds the same 262 cells as all 2^24 colours, 9x faster
    v = np.r_[np.arange(0, 256, 2), 255].astype(np.uint8)
    b, g, r = np.meshgrid(v, v, v, indexing="ij")
    bgr = np.stack([b, g, r], -1).reshape(-1, 1, 3)
    ab = bgr_to_lab_float(bgr).reshape(-1, 3)[:, 1:]
    cells = np.round(ab / AB_GRID).astype(np.int32) + 64  # non-negative cell indices
    keys = np.unique(cells[:, 0] * 128 + cells[:, 1])  # 1-D keys: far faster than unique(axis=0)
    return (np.stack([keys // 128 - 64, keys % 128 - 64], 1) * AB_GRID).astype(np.float32)


def annealed_mean(probs_or_logits: np.ndarray, bins: np.ndarray, temperature: float = DEFAULT_TEMPERATURE,
                  logits: bool = True) -> np.ndarray:
    """ab (B×2×h×w) from bin scores (B×Q×h×w) by the annealed mean, computed in float32/64.

    With logits, softmax(z / T); with probabilities, p^(1/T) renormalised (the same thing)."""
    z = probs_or_logits.astype(np.float64)
    if logits:
        z = z / temperature
    else:
        z = np.log(np.clip(z, 1e-12, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("bqhw,qc->bchw", p, bins.astype(np.float64)).astype(np.float32)
