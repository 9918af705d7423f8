"""The floor: CPU per frame of the work no colorizer can skip on the same clip and machine,
to compare a pipeline's own CPU per frame with.

    decode   one frame read from the input (demux, decode, grey check), as ingest does
    lab      one 8-bit Lab → BGR conversion at the output size (colour has to reach BGR once)
    jpeg     one JPEG encode at the output size, at the publisher's quality

Each part is process CPU time (all threads), the median over a few dozen frames; a second
process that keeps cores busy (`--load`) is outside this process and not counted.
"""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import cv2
import numpy as np

from stream import protocol
from stream.config import SourceConfig
from stream.sources import open_capture


def _cpu_ms(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return float(np.median(times) * 1000)


def measure_floor(path: Path, frames: int = 40, jpeg_quality: int = 90) -> dict:
    """The parts of the floor for the video at `path` (CPU ms per frame) and their sum."""
    capture = open_capture(SourceConfig(file=Path(path)))
    try:
        first = capture.read()  # the decoder's start-up is not per-frame work
        if first is None:
            raise ValueError(f"{path}: no frame to measure")
        read_times, done = [], 0
        while done < frames:
            start = time.process_time()
            image = capture.read()
            if image is None:
                break
            read_times.append(time.process_time() - start)
            done += 1
    finally:
        capture.close()
    decode = float(np.median(read_times) * 1000) if read_times else None
    h, w = first.shape[:2]
    l8 = first if first.ndim == 2 else cv2.cvtColor(first, cv2.COLOR_BGR2GRAY)
    # a colour picture of this frame: its own L with a smooth tint, like a colorizer's output
    tint = np.zeros((h, w, 3), np.uint8)
    tint[..., 0] = l8
    tint[..., 1] = cv2.resize(np.array([[118, 140], [150, 120]], np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    tint[..., 2] = cv2.resize(np.array([[140, 112], [128, 150]], np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    bgr = cv2.cvtColor(tint, cv2.COLOR_Lab2BGR)
    lab = _cpu_ms(lambda: cv2.cvtColor(tint, cv2.COLOR_Lab2BGR), frames)
    jpeg = _cpu_ms(lambda: protocol.encode_image(bgr, jpeg_quality), frames)
    parts = {"decode_ms": decode, "lab_ms": lab, "jpeg_ms": jpeg}
    return {**parts, "total_ms": sum(v for v in parts.values() if v is not None), "width": w, "height": h,
            "frames": len(read_times)}


def _spin(stop) -> None:
    while not stop.is_set():
        for _ in range(100_000):
            pass


class Load:
    """`cores` processes that each keep one core busy, for `with` blocks: other work on the
    machine, as a user's would be."""

    def __init__(self, cores: int):
        self.cores = cores
        # fork: the child runs a plain loop, nothing of the parent's threads
        self._context = multiprocessing.get_context("fork")
        self._stop = self._context.Event()
        self._procs: list[multiprocessing.Process] = []

    def __enter__(self) -> "Load":
        for _ in range(self.cores):
            proc = self._context.Process(target=_spin, args=(self._stop,), daemon=True, name="bench-load")
            proc.start()
            self._procs.append(proc)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for proc in self._procs:
            proc.join(2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
