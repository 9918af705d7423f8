"""The seed approach the benchmark compares against: the OpenCV-DNN route of Zhang et al.'s
ECCV16 colorization, one frame at a time.

Per frame, as that route does it: float BGR → Lab, the L channel resized to 224×224 and
centred (L − 50), one forward pass of the ECCV16 network (batch 1), the 56×56 ab
upsampled to the frame size, merged with the full-resolution L, converted back to BGR.
The network has random weights (speed does not depend on their values); it is written
as a plain ONNX by engines.official.seed_eccv16_onnx, which needs torch, once, and kept
in a cache folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

CACHE = Path(__file__).parent / ".cache"
SEED_SIDE = 224
AB_NORM = 110.0  # the seed network's output is ab / 110


class SeedError(RuntimeError):
    """The seed network cannot be made or loaded; one line for the user."""


def seed_model(cache: Path = CACHE) -> Path:
    """The seed ECCV16 ONNX, written on first use."""
    path = Path(cache) / "seed-eccv16-random.onnx"
    if path.is_file():
        return path
    try:
        from engines.official import seed_eccv16_onnx
    except ImportError as exc:
        raise SeedError(f"the seed comparison needs torch to write its network once ({exc.name or exc} "
                        f"missing): pip install 'chromacast[train]'") from None
    tmp = path.with_suffix(".tmp.onnx")
    seed_eccv16_onnx(tmp)
    tmp.replace(path)
    return path


class SeedColorizer:
    """ECCV16 through OpenCV DNN, one frame per forward pass."""

    def __init__(self, model: Path):
        try:
            self.net = cv2.dnn.readNetFromONNX(str(model))
        except cv2.error as exc:
            raise SeedError(f"OpenCV DNN cannot load {model}: {str(exc).strip().splitlines()[-1]}") from None

    def colorize(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        lab = cv2.cvtColor(bgr.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab)
        l_full = lab[:, :, 0]
        l_small = cv2.resize(l_full, (SEED_SIDE, SEED_SIDE)) - np.float32(50)
        self.net.setInput(l_small[None, None])
        ab = self.net.forward()[0].transpose(1, 2, 0) * np.float32(AB_NORM)
        ab_full = cv2.resize(ab, (w, h))
        out = cv2.cvtColor(np.dstack((l_full, ab_full)), cv2.COLOR_Lab2BGR)
        return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def measure_seed(frames: Sequence[np.ndarray], seconds: float, model: Path | None = None,
                 min_frames: int = 3) -> dict:
    """Frames per second of the seed route over `frames` (cycled), after one warm-up frame:
    runs for at least `seconds` and at least `min_frames` frames."""
    if not frames:
        raise SeedError("no frames to run the seed approach on")
    colorizer = SeedColorizer(model or seed_model())
    colorizer.colorize(frames[0])  # first forward pass allocates; not counted
    done, started = 0, time.perf_counter()
    while done < min_frames or time.perf_counter() - started < seconds:
        colorizer.colorize(frames[done % len(frames)])
        done += 1
    elapsed = time.perf_counter() - started
    return {"fps": done / elapsed, "frames": done, "seconds": elapsed, "input": f"{SEED_SIDE}x{SEED_SIDE}",
            "route": "OpenCV DNN, ECCV16 architecture (random weights), batch 1",
            "opencv_threads": cv2.getNumThreads()}


def read_bgr_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of a video as BGR, the way cv2.VideoCapture gives them."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames
