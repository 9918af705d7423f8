"""Colour quality and temporal stability metrics (numpy and OpenCV only).

Images are 8-bit BGR (OpenCV's order) unless a function says otherwise.

- `psnr`: on float64 values: uint8 differences wrap around, so inputs are cast first.
- `colourfulness`: Hasler and Süsstrunk (2003), on 0–255 RGB (absolute opponent channels).
- `warp_error` (E_warp(DIS)): OpenCV's DIS optical flow on the *input* grey frames; each
  next output frame is warped back onto the current one; pixels failing a
  forward–backward consistency check (occlusions) or flowing out of the frame are
  masked; the mean squared error over the remaining pixels and channels, with RGB
  in [0, 1], averaged over frame pairs (as Lai et al. 2018 define the warping error).
- `cdc` (colour distribution consistency): Jensen–Shannon divergence between the
  per-channel 256-bin histograms of frames 1, 2 and 4 apart, averaged over pairs,
  channels and the three gaps. Natural logarithm: identical histograms give 0,
  disjoint ones ln 2 ≈ 0.693.
- `HueScore` (hue_hits, hue_balanced): whether colours land on the right hue. Over
  ground-truth pixels with CIE Lab chroma > 15, a hit is an output pixel with chroma > 5
  whose hue angle is within 45° of the ground truth's. `hue_balanced` averages the hit
  rate of six 60° ground-truth hue sectors from −10° (red, orange-yellow, foliage, cyan,
  blue, magenta) that hold at least 2% of those pixels, so one constant tint, which can
  only hit its own sector, cannot score well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

CDC_GAPS = (1, 2, 4)
# forward–backward check of Sundaram et al. (2010), as used for the warping error:
# |F + B(x+F)|² <= FB_ALPHA (|F|² + |B(x+F)|²) + FB_BETA
FB_ALPHA, FB_BETA = 0.01, 0.5


def psnr(image: np.ndarray, reference: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, computed in float64 (inf for identical images)."""
    if image.shape != reference.shape:
        raise ValueError(f"shape mismatch: {image.shape} vs {reference.shape}")
    mse = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak * peak / mse))


def colourfulness(image: np.ndarray, order: str = "bgr", absolute: bool = True) -> float:
    """Hasler–Süsstrunk colourfulness of an 8-bit (0–255) colour image; 0 for any grey image.

    M = sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²) with rg = |R − G| and
    yb = |(R + G)/2 − B|: the absolute opponent channels of the implementation that
    colorization papers report (and that the project's reference figures use, e.g.
    38.7 for Kodak24 at short side 256). absolute=False gives the paper's signed
    channels, which score about 8% higher on natural photos."""
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', not {order!r}")
    px = image.reshape(-1, 3).astype(np.float64)
    r, g, b = (px[:, 2], px[:, 1], px[:, 0]) if order == "bgr" else (px[:, 0], px[:, 1], px[:, 2])
    rg, yb = r - g, 0.5 * (r + g) - b
    if absolute:
        rg, yb = np.abs(rg), np.abs(yb)
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@dataclass
class FlowPair:
    """Where each pixel of frame t lands in frame t+1, and which pixels can be trusted."""

    map_x: np.ndarray  # H×W float32: x + forward flow
    map_y: np.ndarray
    valid: np.ndarray  # H×W float64 mask: 1 = consistent and inside the frame
    back_x: np.ndarray  # H×W float32: where each pixel of frame t+1 was in frame t (x + backward flow)
    back_y: np.ndarray


class DisFlow:
    """Forward/backward DIS flow between two input frames (8-bit grey), with the occlusion mask."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
        self.dis = cv2.DISOpticalFlow_create(preset)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def pair(self, cur: np.ndarray, nxt: np.ndarray) -> FlowPair:
        fw = self.dis.calc(cur, nxt, None)
        bw = self.dis.calc(nxt, cur, None)
        h, w = cur.shape
        if self._grid is None or self._grid[0].shape != (h, w):
            self._grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        map_x, map_y = self._grid[0] + fw[..., 0], self._grid[1] + fw[..., 1]
        bw_at = cv2.remap(bw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        round_trip = ((fw + bw_at) ** 2).sum(-1)
        bound = FB_ALPHA * ((fw ** 2).sum(-1) + (bw_at ** 2).sum(-1)) + FB_BETA
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        return FlowPair(map_x, map_y, ((round_trip <= bound) & inside).astype(np.float64),
                        self._grid[0] + bw[..., 0], self._grid[1] + bw[..., 1])


def dis_flow_pairs(grey_frames: Sequence[np.ndarray]) -> list[FlowPair]:
    """Flow pairs between consecutive input frames. The flow belongs to the input, not to any
    colorization of it, so one set serves every output being scored."""
    flow = DisFlow()
    return [flow.pair(cur, nxt) for cur, nxt in zip(grey_frames[:-1], grey_frames[1:])]


def warp_error(frames: Sequence[np.ndarray], pairs: Sequence[FlowPair]) -> float:
    """E_warp of output frames (8-bit BGR) given the input's flow pairs; RGB scaled to [0, 1].

    For each t: warp frame t+1 back onto frame t along the flow, and average the squared
    difference over unmasked pixels and the three channels; then average over t."""
    if len(frames) != len(pairs) + 1:
        raise ValueError(f"{len(frames)} frames but {len(pairs)} flow pairs")
    errors = [pair_warp_error(cur, nxt, pair) for cur, nxt, pair in zip(frames[:-1], frames[1:], pairs)]
    errors = [e for e in errors if e is not None]
    return float(np.mean(errors)) if errors else float("nan")


def pair_warp_error(cur: np.ndarray, nxt: np.ndarray, pair: FlowPair) -> float | None:
    """Masked mean squared error between frame t and frame t+1 warped back (None: all masked)."""
    warped = cv2.remap(nxt.astype(np.float32), pair.map_x, pair.map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    diff2 = ((cur.astype(np.float64) - warped) / 255.0) ** 2
    n = pair.valid.sum() * diff2.shape[-1]
    return float((diff2 * pair.valid[..., None]).sum() / n) if n > 0 else None


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence of two histograms (normalised here), natural log: 0 … ln 2."""
    p = np.asarray(p, np.float64).ravel()
    q = np.asarray(q, np.float64).ravel()
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0  # 0 · log 0 = 0; m > 0 wherever a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def channel_histograms(image: np.ndarray) -> np.ndarray:
    """3×256 counts of an 8-bit colour image, one row per channel."""
    px = image.reshape(-1, image.shape[-1])
    return np.stack([np.bincount(px[:, c], minlength=256) for c in range(px.shape[1])]).astype(np.float64)


def cdc(frames: Sequence[np.ndarray], gaps: Sequence[int] = CDC_GAPS) -> float:
    """Colour distribution consistency of a sequence of 8-bit colour frames (lower is steadier).

    Mean over the gaps (that the sequence is long enough for) of the mean over
    channels and frame pairs t, t+gap of the JS divergence of the channel histograms."""
    hists = [channel_histograms(f) for f in frames]
    per_gap = {g: [histogram_divergence(a, b) for a, b in zip(hists[:-g], hists[g:])] for g in gaps}
    return cdc_from_divergences(per_gap)


def histogram_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of the JS divergence between two frames' channel histograms."""
    return float(np.mean([js_divergence(a[c], b[c]) for c in range(a.shape[0])]))


def cdc_from_divergences(per_gap: dict[int, list[float]]) -> float:
    """CDC from the frame-pair divergences collected for each gap (gaps without pairs are left out)."""
    means = [np.mean(v) for v in per_gap.values() if v]
    return float(np.mean(means)) if means else float("nan")


HUE_SECTORS = ("red", "orange_yellow", "foliage", "cyan", "blue", "magenta")
HUE_SECTOR_START = -10.0  # degrees: red spans [-10°, 50°)
HUE_GT_CHROMA, HUE_OUT_CHROMA, HUE_TOLERANCE = 15.0, 5.0, 45.0
HUE_MIN_SHARE = 0.02


def lab_chroma_hue(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIE Lab chroma and hue angle (degrees, 0-360) of an 8-bit BGR image."""
    lab = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    a, b = lab[..., 1], lab[..., 2]
    return np.hypot(a, b), np.degrees(np.arctan2(b, a)) % 360.0


class HueScore:
    """Hue hits accumulated over images; `result()` gives hue_hits, hue_balanced, per sector."""

    def __init__(self) -> None:
        self.pixels = np.zeros(len(HUE_SECTORS), np.int64)
        self.hits = np.zeros(len(HUE_SECTORS), np.int64)

    def add(self, output: np.ndarray, truth: np.ndarray) -> None:
        gt_chroma, gt_hue = lab_chroma_hue(truth)
        out_chroma, out_hue = lab_chroma_hue(output)
        coloured = gt_chroma > HUE_GT_CHROMA
        diff = np.abs(out_hue[coloured] - gt_hue[coloured])
        hit = (np.minimum(diff, 360.0 - diff) <= HUE_TOLERANCE) & (out_chroma[coloured] > HUE_OUT_CHROMA)
        sector = (((gt_hue[coloured] - HUE_SECTOR_START) % 360.0) // 60.0).astype(np.int64)
        self.pixels += np.bincount(sector, minlength=len(HUE_SECTORS))
        self.hits += np.bincount(sector[hit], minlength=len(HUE_SECTORS))

    def result(self) -> dict:
        total = int(self.pixels.sum())
        if total == 0:
            return {"hue_hits": None, "hue_balanced": None, "hue_sectors": {}}
        rates = {name: (float(self.hits[i] / self.pixels[i]) if self.pixels[i] else None)
                 for i, name in enumerate(HUE_SECTORS)}
        held = [rates[name] for i, name in enumerate(HUE_SECTORS) if self.pixels[i] >= HUE_MIN_SHARE * total]
        return {"hue_hits": float(self.hits.sum() / total), "hue_balanced": float(np.mean(held)),
                "hue_sectors": {name: {"rate": rates[name], "share": float(self.pixels[i] / total)}
                                for i, name in enumerate(HUE_SECTORS)}}
