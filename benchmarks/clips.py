"""Greyscale test clips for the benchmark, written once per size and kept in a cache folder.

A clip is H.264 (yuv420p with neutral chroma, the way black-and-white footage usually
comes) of a panning textured scene with moving shapes, so that decoding costs what real
footage costs rather than what a flat picture costs.
"""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.config import SourceConfig
from stream.sources import open_capture

CACHE = Path(__file__).parent / ".cache"
SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
CLIP_SECONDS = 4.0
PAN_PX_PER_FRAME = 2
GRAIN = 6  # grey levels of film grain, either way
GRAIN_FIELDS = 8


def clip_path(width: int, height: int, fps: float, seconds: float = CLIP_SECONDS, folder: Path = CACHE) -> Path:
    return Path(folder) / f"grey-{width}x{height}-{fps:g}fps-{seconds:g}s.mp4"


def make_clip(width: int, height: int, fps: float = 30.0, seconds: float = CLIP_SECONDS,
              folder: Path = CACHE) -> Path:
    """The clip of this size and rate, written if it is not in `folder` yet."""
    path = clip_path(width, height, fps, seconds, folder)
    if path.is_file():
        return path
    import av  # PyAV: FFmpeg's own encoder and muxer

    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.stem + ".part.mp4")
    count = max(1, round(fps * seconds))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(part), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {"qscale": "4"}
        for grey in synthetic_frames(width, height, count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    part.replace(path)
    return path


def synthetic_frames(width: int, height: int, count: int, seed: int = 7):
    """`count` grey frames: a texture of coarse and fine detail panning right under film
    grain, two discs moving."""
    rng = np.random.default_rng(seed)
    span = width + PAN_PX_PER_FRAME * count
    coarse = cv2.resize(rng.random((height // 48 + 2, span // 48 + 2), np.float32), (span, height),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.random((height // 3, span // 3), np.float32), (span, height),
                      interpolation=cv2.INTER_LINEAR)
    texture = np.clip((0.75 * coarse + 0.25 * fine) * 200 + 20, 0, 255).astype(np.int16)
    # film grain, a few fields cycled: footage is never clean, and grain is what costs bits to decode
    grain = rng.integers(-GRAIN, GRAIN + 1, (GRAIN_FIELDS, height, width), dtype=np.int16)
    radius = max(4, height // 10)
    for i in range(count):
        x = PAN_PX_PER_FRAME * i
        frame = np.clip(texture[:, x:x + width] + grain[i % GRAIN_FIELDS], 0, 255).astype(np.uint8)
        t = i / max(1, count - 1)
        cv2.circle(frame, (int(radius + t * (width - 2 * radius)), height // 3), radius, 235, -1, cv2.LINE_AA)
        cv2.circle(frame, (int(width - radius - t * (width - 2 * radius)), 2 * height // 3), radius // 2, 15, -1,
                   cv2.LINE_AA)
        yield frame


def decode_ms_per_frame(path: Path, frames: int = 30) -> float | None:
    """Mean time of one Capture.read() of `path` (demux + decode + grey check), the part of
    ingest that happens before the capture stamp and so is not in the frame headers."""
    capture = open_capture(SourceConfig(file=Path(path)))
    try:
        capture.read()  # the decoder's first frame carries its start-up
        done, started = 0, time.perf_counter()
        while done < frames and capture.read() is not None:
            done += 1
        return (time.perf_counter() - started) * 1000 / done if done else None
    finally:
        capture.close()
