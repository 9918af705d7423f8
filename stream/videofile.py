"""Video files in with PyAV (FFmpeg's own demuxers and decoders).

VideoReader decodes every frame in order with its own timestamps, and can restart
just after a given frame (seek to the keyframe before it, then decode up to it; full
decode from the start if the timestamps do not line up). Writing is in
stream/videoencode.py (segments) and stream/videomux.py (final file with audio).
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation


log = logging.getLogger("chromacast.colorize")

# swscale's default YUV 4:2:0 -> RGB path rounds coarsely and drops chroma detail
TO_RGB = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


class VideoFileError(RuntimeError):
    """A video cannot be read or written; the message is one line for the user."""


def ffmpeg_message(exc: BaseException) -> str:
    """FFmpeg's reason without the errno and path decoration PyAV adds."""
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    time_base: Fraction
    rate: Fraction  # average frame rate (nominal for variable-rate files)
    frames: int  # the container's frame count, or an estimate from the duration; 0 if unknown
    start_pts: int
    colorspace: int  # AVColorSpace of the input, mirrored on the output
    audio_streams: int

    @property
    def frame_duration_s(self) -> float:
        return float(1 / self.rate)


@dataclass
class DecodedFrame:
    index: int
    pts: int
    duration: int
    time_s: float  # from the first frame
    frame: av.VideoFrame = field(repr=False)

    def to_bgr(self) -> np.ndarray:
        return to_bgr(self.frame)


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """8-bit BGR of a decoded frame, converted with the frame's own colour matrix and range."""
    return frame.reformat(format="bgr24", src_color_range=frame.color_range or None,
                          interpolation=TO_RGB).to_ndarray()


class VideoReader:
    """Frames of the first video stream of a file, in presentation order, none skipped."""

    def __init__(self, path: Path):
        self.path = path
        self.container = _open_input(path)
        self._read = False  # once decoding has started, a restart reopens the file
        self.skipped = 0  # undecodable frames, each replaced by its nearest good neighbour
        self.retimed = 0  # frames whose timestamp went backwards or repeated
        if not self.container.streams.video:
            self.container.close()
            raise VideoFileError(f"{path} has no video stream")
        s = self.container.streams.video[0]
        s.thread_type = "AUTO"  # frame and slice threads in the decoder
        cc = s.codec_context
        rate = s.average_rate or s.guessed_rate or s.base_rate or Fraction(25)
        tb = s.time_base or Fraction(1, 1) / rate
        frames = s.frames
        if not frames and s.duration:
            frames = int(round(float(s.duration * tb * rate)))
        elif not frames and self.container.duration:
            frames = int(round(self.container.duration / 1e6 * float(rate)))
        self.info = VideoInfo(s.width, s.height, Fraction(tb), Fraction(rate), int(frames or 0),
                              int(s.start_time or 0), int(cc.colorspace), len(self.container.streams.audio))
        if not s.width or not s.height:
            raise VideoFileError(f"{path}: video stream has no frame size (unsupported codec?)")

    def frames(self, anchor: tuple[int, int] | None = None) -> Iterator[DecodedFrame]:
        """All frames from the start, or from the frame `anchor` = (index, pts) on.

        With an anchor, seek to the keyframe before it and decode forward to it; if
        that frame does not turn up exactly (odd timestamps), decode from the start."""
        if anchor is not None and self._seek(anchor[1]):
            index, pts = anchor
            found = False
            for f in self._decode():
                if not found:
                    if f.pts < pts:
                        continue
                    if f.pts > pts:
                        break
                    found = True
                f.index = index
                index += 1
                yield f
            if found:
                return
        if self._read:
            self._restart()
        self._read = True
        for i, f in enumerate(self._decode()):
            f.index = i
            if anchor is None or i >= anchor[0]:
                yield f

    def _seek(self, pts: int) -> bool:
        """Position at the keyframe at or before `pts`; False where the file cannot seek."""
        try:
            self.container.seek(pts, stream=self.container.streams.video[0], backward=True)
        except av.error.FFmpegError:
            return False
        self._read = True
        return True

    def _restart(self) -> None:
        self.container.close()
        self.container = _open_input(self.path)
        self.container.streams.video[0].thread_type = "AUTO"

    def _decode(self) -> Iterator[DecodedFrame]:
        """Decode on from where the demuxer stands (the start, or where _seek left it).

        A damaged file still gives every frame at its time: a frame whose packet was read but
        never decoded (broken data, or no keyframe to decode it from) is replaced by the nearest
        good frame, the one before or, at the start, the first one (counted in `skipped`);
        timestamps that go backwards or repeat are moved to one nominal frame after the last
        (counted in `retimed`), since no encoder takes them."""
        s = self.container.streams.video[0]
        info = self.info
        default_duration = max(1, int(round(1 / (info.rate * info.time_base))))
        last_pts: int | None = None
        previous: av.VideoFrame | None = None
        pending: list[int] = []  # pts of packets read whose frame has not come out yet

        def made(frame: av.VideoFrame, pts: int | None, duration: int) -> DecodedFrame:
            nonlocal last_pts
            if last_pts is not None and (pts is None or pts <= last_pts):
                self.retimed += pts is not None
                pts = last_pts + default_duration
            elif pts is None:  # raw streams without timestamps
                pts = info.start_pts
            last_pts = pts
            return DecodedFrame(-1, pts, duration, float((pts - info.start_pts) * info.time_base), frame)

        def stand_ins(frame: av.VideoFrame, before: int | None) -> Iterator[DecodedFrame]:
            # frames come out in presentation order: a packet earlier than this frame never will
            while pending and (before is None or pending[0] < before):
                pts = heapq.heappop(pending)
                if last_pts is None or pts > last_pts:
                    self.skipped += 1
                    if self.skipped == 1:
                        log.warning("%s: a frame cannot be decoded; its nearest good frame stands in "
                                    "(each one is counted)", self.path)
                    yield made(frame, pts, default_duration)

        demux = self.container.demux(s)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                log.warning("%s: stopped reading at a damaged part of the file (%s)", self.path,
                            ffmpeg_message(exc))
                break
            if packet.size and packet.pts is not None:
                heapq.heappush(pending, packet.pts)
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue  # its frame is missing from the output order: a stand-in takes its place
            for frame in frames:
                if frame.pts is not None:
                    yield from stand_ins(previous or frame, frame.pts)
                    if pending and pending[0] == frame.pts:
                        heapq.heappop(pending)
                previous = frame
                yield made(frame, frame.pts, int(frame.duration or 0) or default_duration)
        if previous is not None:
            yield from stand_ins(previous, None)

    def close(self) -> None:
        self.container.close()


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoFileError(f"input not found: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoFileError(f"cannot read {path}: {ffmpeg_message(exc)}") from None

