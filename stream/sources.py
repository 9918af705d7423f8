"""Captures: one open connection to a webcam, an RTSP camera, a video file or an image folder.

A capture only reads frames; what happens around it (reconnecting, pacing, dropping, the
L plane) is the ingest stage's job (stream/ingest.py). `open_capture` raises SourceError
with one line for the user when the input cannot be opened.

Video files and RTSP go through PyAV (FFmpeg's own demuxers and decoders, with open/read
timeouts and per-packet error reporting); webcams through OpenCV's V4L2/DirectShow/AVFoundation
capture. Frames whose chroma is neutral are taken as grey, so black-and-white sources skip
the colour conversion.
"""
from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from stream.config import SourceConfig
from stream.protocol import MIN_FPS

log = logging.getLogger("chromacast.sources")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
DEFAULT_FPS = 25.0
# 8-bit planar YUV layouts whose U and V planes can be checked for a grey picture
PLANAR_YUV8 = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p",
               "yuv411p", "yuv410p"}


class SourceError(RuntimeError):
    """An input that cannot be opened or read; str() is one line for the user."""


class CaptureLost(Exception):
    """A live capture stopped delivering frames (camera gone, network down, read timeout)."""


class Capture(ABC):
    """An open input. `read` returns the next frame (grey H×W, BGR or BGRA as decoded; never
    copied), None at the end of a file, or raises CaptureLost for a live input that went away.
    `skipped` counts frames that could not be decoded and were left out."""

    fps: float = DEFAULT_FPS
    skipped: int = 0

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    def close(self) -> None:
        pass


class Disconnected(Capture):
    """Stands in for a live camera that is not connected (lost, or not up yet at start)."""

    def __init__(self, fps: float | None = None):
        self.fps = float(fps or DEFAULT_FPS)

    def read(self):
        raise CaptureLost("not connected")


def open_capture(config: SourceConfig) -> Capture:
    kind = config.kind
    if kind == "file":
        return AvCapture(str(config.file), config, live=False)
    if kind == "rtsp":
        return AvCapture(config.rtsp, config, live=True)
    if kind == "folder":
        return FolderCapture(config)
    return WebcamCapture(config)


def _neutral_chroma(frame) -> bool:
    """True when a planar YUV frame's U and V planes are all (near) 128: a grey picture."""
    planes = frame.planes
    if len(planes) < 3 or frame.format.name not in PLANAR_YUV8:
        return False
    for plane in planes[1:3]:
        rows = np.frombuffer(plane, np.uint8)[: plane.line_size * plane.height]
        chroma = rows.reshape(plane.height, plane.line_size)[:, : plane.width]
        if chroma.size == 0 or chroma.min() < 126 or chroma.max() > 130:
            return False
    return True


class AvCapture(Capture):
    """A video file or an RTSP stream, demuxed and decoded by PyAV."""

    def __init__(self, url: str, config: SourceConfig, live: bool):
        import av  # here, so that importing this module does not load FFmpeg

        self._av = av
        self.url, self.live = url, live
        self.read_timeout_s = config.reconnect.read_timeout_s
        if not live and not Path(url).is_file():
            raise SourceError(f"video file not found: {url}" if not Path(url).exists()
                              else f"not a video file: {url}")
        options = {}
        timeout = None
        if live:
            # TCP: a dead server shows as a closed connection at once, and no packet loss
            options = {"rtsp_transport": "tcp", "fflags": "nobuffer", "flags": "low_delay",
                       "analyzeduration": "1000000", "probesize": "500000"}
            timeout = (config.reconnect.open_timeout_s, config.reconnect.read_timeout_s)
        try:
            self.container = av.open(url, options=options, timeout=timeout)
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot open {'RTSP stream' if live else 'video file'} {url}: "
                              f"{_ffmpeg_reason(exc)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"no video stream in {url}")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg's decoder
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        rate = float(rate or 0)
        self.fps = float(config.fps or (rate if MIN_FPS <= rate <= 1000 else DEFAULT_FPS))  # a damaged header
        self._frames = self._decode()

    def _decode(self) -> Iterator:
        av = self._av
        demux = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.ExitError:  # FFmpeg's read timed out
                raise CaptureLost(f"no data for {self.read_timeout_s:g} s") from None
            except av.error.FFmpegError as exc:
                if self.live:
                    raise CaptureLost(_ffmpeg_reason(exc)) from None
                log.warning("%s: stopped reading at a damaged part of the file (%s)", self.url,
                            _ffmpeg_reason(exc))
                return
            try:
                yield from packet.decode()
            except av.error.FFmpegError as exc:
                self.skipped += 1
                if self.skipped == 1:
                    log.warning("%s: skipping undecodable data (%s)", self.url, _ffmpeg_reason(exc))

    def read(self) -> np.ndarray | None:
        frame = next(self._frames, None)
        if frame is None:
            if self.live:
                raise CaptureLost("stream ended")
            return None
        if frame.format.name == "gray" or _neutral_chroma(frame):
            return frame.to_ndarray(format="gray")
        return frame.to_ndarray(format="bgr24")

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # closing a broken connection must not mask why it broke
            pass


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).splitlines()[0]


class FolderCapture(Capture):
    """Image files of a folder in name order, read with OpenCV (8/16-bit, grey/BGR/BGRA)."""

    def __init__(self, config: SourceConfig):
        folder = Path(config.folder)
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.fps = float(config.fps or DEFAULT_FPS)
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is not None and image.size:
                return image
            self.skipped += 1
            log.warning("skipping unreadable image %s", path)
        return None


class WebcamCapture(Capture):
    """A local camera by index, through OpenCV."""

    def __init__(self, config: SourceConfig):
        index = config.webcam
        if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}"):
            raise SourceError(f"webcam {index} not found (/dev/video{index} does not exist)")
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our own line says it
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        self.capture = cv2.VideoCapture(index, backend)
        if not self.capture.isOpened():
            raise SourceError(f"cannot open webcam {index}")
        if config.width and config.height:
            self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        if config.fps:
            self.capture.set(cv2.CAP_PROP_FPS, config.fps)
        reported = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(config.fps or (reported if 0 < reported < 1000 else 30.0))
        self.index = index

    def read(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        if not ok or image is None:
            raise CaptureLost(f"webcam {self.index} returned no frame")
        return image

    def close(self) -> None:
        self.capture.release()
