"""Training sequences: colour stills turned into pseudo-video, and real colour clips.

Every sample is a short sequence of T frames (Lab, float32) so the recurrent state
learns to carry colour. Each frame t > 0 comes with where its pixels were in frame
t-1 (a sampling grid) and which of them can be trusted, for the temporal-consistency
loss: exact for stills moved by a smooth random affine, DIS optical flow with the
forward–backward occlusion check for real clips (the check the eval's E_warp uses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.colour import bgr_to_lab_float
from engines.metrics import DisFlow

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm"}


def resize_short(img: np.ndarray, short: int, upscale: bool = True) -> np.ndarray:
    h, w = img.shape[:2]
    s = short / min(h, w)
    if s >= 1 and not upscale:
        return img
    return cv2.resize(img, (max(short, round(w * s)), max(short, round(h * s))), interpolation=cv2.INTER_AREA)


def is_colourful(bgr: np.ndarray, min_chroma: float = 5.0) -> bool:
    """Near-grey photos teach the network nothing about colour: keep mean |ab| >= min_chroma."""
    lab = bgr_to_lab_float(cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA))
    return float(np.abs(lab[..., 1:]).mean()) >= min_chroma


def load_images(folder: Path, short: int, limit: int | None = None) -> list[np.ndarray]:
    """Colour photos of one folder, cached at short side `short` (smaller ones are not upscaled:
    an upscaled copy holds no more detail and costs memory; the sampler zooms anyway)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:limit]
    out = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < 32:
            continue
        img = resize_short(img, short, upscale=False)
        if is_colourful(img):
            out.append(img)
    return out


def image_sources(folders: list[Path]) -> dict[str, list[Path]]:
    """Each folder of photos is one source; a folder of folders (train/scenes) gives one source
    per subfolder, so that one large collection cannot dominate what the network sees."""
    sources: dict[str, list[Path]] = {}
    for folder in folders:
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        if any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir()) or not subs:
            sources[folder.name] = [folder]
        for sub in subs:
            sources[f"{folder.name}/{sub.name}"] = [sub]
    return sources


def capped_shares(counts: dict[str, int], cap: float, reserved: float = 0.0) -> dict[str, float]:
    """Share of all samples for each source: proportional to its size, but no source above `cap`;
    what a capped source gives up goes to the others in proportion (water-filling). `reserved` is
    the share taken by something else (the real clips), which the sources share the rest of."""
    left = 1.0 - reserved
    shares: dict[str, float] = {}
    free = {k: v for k, v in counts.items() if v > 0}
    while free:
        total = sum(free.values())
        over = {k for k, v in free.items() if left * v / total > cap}
        if not over:
            shares.update({k: left * v / total for k, v in free.items()})
            break
        for k in over:
            shares[k] = cap
            left -= cap
            del free[k]
    return shares


def load_clips(folder: Path, short: int, max_frames: int = 400) -> list[np.ndarray]:
    clips = []
    if not folder.is_dir():
        return clips
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        cap = cv2.VideoCapture(str(p))
        frames = []
        while len(frames) < max_frames:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(resize_short(f, short))
        cap.release()
        if len(frames) >= 4:
            clips.append(np.stack(frames))
    return clips


@dataclass
class Batch:
    lab: np.ndarray  # B×T×3×S×S float32 (L in [0,100], ab in Lab units)
    grid: np.ndarray  # B×T×S×S×2 float32: where frame t's pixels were in frame t-1 (grid_sample coords)
    trust: np.ndarray  # B×T×S×S float32: 1 where that position is known (in frame, not occluded)


class SequenceSampler:
    """Batches of sequences. `images` is one list of photos, or photos by source with
    `source_shares` (share of all samples per source, see capped_shares) to balance them."""

    def __init__(self, images: list[np.ndarray] | dict[str, list[np.ndarray]], clips: list[np.ndarray],
                 crop: int, steps: int, video_fraction: float, seed: int = 0,
                 source_shares: dict[str, float] | None = None):
        by_source = images if isinstance(images, dict) else {"images": images}
        self.sources = [k for k, v in by_source.items() if v]
        self.by_source = by_source
        self.images = [img for k in self.sources for img in by_source[k]]
        self.clips = clips
        self.crop, self.steps = crop, steps
        self.video_fraction = video_fraction if clips else 0.0
        shares = source_shares or {k: len(by_source[k]) for k in self.sources}
        p = np.array([shares.get(k, 0.0) for k in self.sources], np.float64)
        self.source_p = p / p.sum()
        self.rng = np.random.default_rng(seed)
        self.flow = DisFlow(cv2.DISOPTICAL_FLOW_PRESET_FAST)

    def batch(self, size: int) -> Batch:
        s = self.crop
        lab = np.empty((size, self.steps, 3, s, s), np.float32)
        grid = np.zeros((size, self.steps, s, s, 2), np.float32)
        trust = np.zeros((size, self.steps, s, s), np.float32)
        for i in range(size):
            if self.rng.random() < self.video_fraction:
                frames = self._clip_sequence()
                for t in range(1, self.steps):
                    grid[i, t], trust[i, t] = self._flow_back(frames[t], frames[t - 1])
            else:
                frames, warps = self._still_sequence()
                for t in range(1, self.steps):
                    grid[i, t], trust[i, t] = affine_grid(warps[t], s)
            for t, f in enumerate(frames):
                lab[i, t] = bgr_to_lab_float(f).transpose(2, 0, 1)
        return Batch(lab, grid, trust)

    def _flow_back(self, cur: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = [np.ascontiguousarray(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) for f in (cur, prev)]
        pair = self.flow.pair(*grey)
        s = self.crop
        pos = np.stack([(2 * pair.map_x + 1) / s - 1, (2 * pair.map_y + 1) / s - 1], -1)
        return pos.astype(np.float32), pair.valid.astype(np.float32)

    def _clip_sequence(self) -> list[np.ndarray]:
        clip = self.clips[self.rng.integers(len(self.clips))]
        stride = int(self.rng.integers(1, 3))
        start = int(self.rng.integers(0, len(clip) - stride * (self.steps - 1)))
        h, w = clip.shape[1:3]
        y, x = int(self.rng.integers(0, h - self.crop + 1)), int(self.rng.integers(0, w - self.crop + 1))
        flip = self.rng.random() < 0.5
        out = []
        for t in range(self.steps):
            f = clip[start + t * stride, y:y + self.crop, x:x + self.crop]
            out.append(f[:, ::-1] if flip else f)
        return out

    def _still_sequence(self) -> tuple[list[np.ndarray], np.ndarray]:
        pool = self.by_source[self.sources[self.rng.choice(len(self.sources), p=self.source_p)]]
        img = pool[self.rng.integers(len(pool))]
        if self.rng.random() < 0.5:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        s = self.crop
        zoom = self.rng.uniform(0.75, 1.0) * min(h, w) / s  # image pixels per frame pixel
        cx = self.rng.uniform(s * zoom / 2, max(s * zoom / 2, w - s * zoom / 2))
        cy = self.rng.uniform(s * zoom / 2, max(s * zoom / 2, h - s * zoom / 2))
        vel = self.rng.normal(0, 1.5, 2) * zoom
        ang, dang = self.rng.normal(0, 2), self.rng.normal(0, 0.7)
        dzoom = self.rng.normal(0, 0.015)
        mats, frames = [], []
        for _ in range(self.steps):
            m = frame_to_image(s, zoom, math.radians(ang), cx, cy)
            frames.append(cv2.warpAffine(img, m[:2], (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                         borderMode=cv2.BORDER_REFLECT))
            mats.append(m)
            cx, cy = cx + vel[0], cy + vel[1]
            ang, zoom = ang + dang, zoom * (1 + dzoom)
        warps = np.zeros((self.steps, 2, 3), np.float32)
        norm = np.array([[2 / s, 0, 1 / s - 1], [0, 2 / s, 1 / s - 1], [0, 0, 1]])
        for t in range(1, self.steps):
            g = np.linalg.inv(mats[t - 1]) @ mats[t]  # frame t pixel → frame t-1 pixel
            warps[t] = (norm @ g @ np.linalg.inv(norm))[:2]
        return frames, warps


def frame_to_image(size: int, zoom: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """3×3 map from frame pixel coords to image pixel coords."""
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    half = (size - 1) / 2
    return np.array([[c, -s, cx - c * half + s * half], [s, c, cy - s * half - c * half], [0, 0, 1]])


def affine_grid(theta: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampling grid of a 2×3 affine in normalised coordinates (align_corners=False), and in-frame mask."""
    c = (2 * np.arange(size, dtype=np.float32) + 1) / size - 1
    x, y = np.meshgrid(c, c)
    pos = np.stack([theta[0, 0] * x + theta[0, 1] * y + theta[0, 2],
                    theta[1, 0] * x + theta[1, 1] * y + theta[1, 2]], -1).astype(np.float32)
    return pos, (np.abs(pos) <= 1).all(-1).astype(np.float32)
