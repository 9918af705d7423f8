"""Recorder sink: each stream to its own mp4 at the input's frame rate, every frame kept.

PyAV writes the file with FFmpeg's own encoder and muxer (exact timestamps, a proper mp4
trailer on close). H.264 (libx264) when the PyAV build has it, else MPEG-4 part 2. Frame i
gets pts i in a time base of 1/fps, so the file has exactly the frames written, at the fps.
A change of frame size continues in NAME-2.mp4, NAME-3.mp4, ... (class Recording): no frame is rescaled.
The file is written under a hidden partial name beside the final one and renamed only once
it is closed: a file under its final name is always complete and playable.
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.config import RecordConfig
from stream.frame import Frame, StreamEnd
from stream.protocol import MIN_FPS
from stream.sinks.base import Sink, SinkError
from stream.workfolder import partial_name

log = logging.getLogger("chromacast.record")


def pick_codec(codec: str = "auto") -> str:
    import av

    if codec != "auto":
        if codec not in av.codecs_available:
            raise SinkError(f"video codec {codec!r} is not in this PyAV build")
        return codec
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class Mp4Writer:
    """One mp4 file of BGR frames of a fixed size."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, codec: str = "auto",
                 crf: int = 20, preset: str = "veryfast"):
        import av

        self.path = Path(path)
        self.width, self.height = width, height
        self.codec = pick_codec(codec)
        odd = width % 2 or height % 2
        if odd and self.codec != "libx264":
            raise SinkError(f"cannot record {width}x{height} with {self.codec}: it needs even sides")
        if 0 < fps < MIN_FPS:  # its time base could not be written
            raise SinkError(f"cannot record {self.path} at {fps:g} fps: at least {MIN_FPS:g} fps")
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        options = {"crf": str(crf), "preset": preset} if self.codec == "libx264" else {}
        self.partial = partial_name(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.partial), "w")
        except (OSError, av.error.FFmpegError) as exc:
            raise SinkError(f"cannot write {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        self.stream = self.container.add_stream(self.codec, rate=self.rate, options=options)
        self.stream.width, self.stream.height = width, height
        # 4:2:0 is what every player decodes; odd sides need 4:4:4 to keep the exact size
        self.stream.pix_fmt = "yuv444p" if odd else "yuv420p"
        self.stream.codec_context.time_base = 1 / self.rate
        if self.codec == "mpeg4":
            self.stream.codec_context.bit_rate = max(1_000_000, int(width * height * float(self.rate) * 0.15))
        self.frames = 0
        self._resized_warned = False

    def write(self, bgr: np.ndarray) -> None:
        import av

        if bgr.shape[1] != self.width or bgr.shape[0] != self.height:
            if not self._resized_warned:
                log.warning("%s: frame size changed to %dx%d; scaling to %dx%d", self.path,
                            bgr.shape[1], bgr.shape[0], self.width, self.height)
                self._resized_warned = True
            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = self.frames
        frame.time_base = self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def abort(self) -> None:
        """Stop without keeping anything (nothing appears under the final name)."""
        if self.container is not None:
            self.container.close()
            self.container = None
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self.container.close()
            self.container = None
        if self.frames:
            os.replace(self.partial, self.path)  # complete: only now under its final name
        else:
            self.partial.unlink(missing_ok=True)  # nothing recorded: no empty file


class Recording:
    """One stream's recording at `path`. Each time the frame size changes (a camera that came
    back at another resolution) the file is closed and the next one starts at the new size,
    NAME-2.mp4, NAME-3.mp4, ...: no frame is ever scaled to another frame's size."""

    def __init__(self, path: str | Path, fps: float, codec: str = "auto", crf: int = 20,
                 preset: str = "veryfast"):
        self.path, self.fps, self.codec, self.crf, self.preset = Path(path), fps, codec, crf, preset
        self.writer: Mp4Writer | None = None
        self.files: list[tuple[Path, int]] = []  # closed files and their frame counts

    def write(self, bgr: np.ndarray) -> None:
        height, width = bgr.shape[:2]
        if self.writer is not None and (width, height) != (self.writer.width, self.writer.height):
            log.info("%s: frame size changed from %dx%d to %dx%d; continuing in a new file",
                     self.writer.path, self.writer.width, self.writer.height, width, height)
            self._close_file()
        if self.writer is None:
            n = len(self.files) + 1
            path = self.path if n == 1 else self.path.with_name(f"{self.path.stem}-{n}{self.path.suffix}")
            self.writer = Mp4Writer(path, width, height, self.fps, self.codec, self.crf, self.preset)
        self.writer.write(bgr)

    @property
    def frames(self) -> int:
        return sum(n for _, n in self.files) + (self.writer.frames if self.writer else 0)

    @property
    def rate(self) -> Fraction | None:
        return self.writer.rate if self.writer else None

    def _close_file(self) -> None:
        writer, self.writer = self.writer, None
        writer.close()
        if writer.frames:
            self.files.append((writer.path, writer.frames))

    def close(self) -> None:
        if self.writer is not None:
            self._close_file()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class Recorder(Sink):
    """mp4 per stream at `path` ({stream} replaced by the stream id); opened at the first frame."""

    name = "record"
    lossy = False

    def __init__(self, config: RecordConfig):
        self.config = config
        self.codec = pick_codec(config.codec)
        self.writers: dict[str, Recording] = {}
        self.written: dict[str, tuple[Path, int]] = {}  # each stream's (first) file and its frame count

    def path_for(self, stream_id: str) -> Path:
        return Path(self.config.path.format(stream=stream_id))

    def write(self, frame: Frame) -> None:
        recording = self.writers.get(frame.stream)
        if recording is None:
            recording = self.writers[frame.stream] = Recording(
                self.path_for(frame.stream), frame.header.fps, self.codec, self.config.crf, self.config.preset)
        recording.write(frame.colour)

    def end_stream(self, end: StreamEnd) -> None:
        recording = self.writers.pop(end.stream, None)
        if recording is not None:
            self._finish(end.stream, recording)

    def close(self) -> None:
        for stream_id, recording in list(self.writers.items()):
            self._finish(stream_id, recording)
        self.writers.clear()

    def _finish(self, stream_id: str, recording: Recording) -> None:
        rate = recording.rate
        recording.close()
        self.written[stream_id] = (recording.path, recording.frames)
        for path, frames in recording.files:
            log.info("recorded %s: %d frames at %s fps", path, frames, rate)
