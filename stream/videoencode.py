"""Colorized frames into segment files with PyAV.

SegmentEncoder encodes frames into one segment file, keeping each frame's input
timestamp and duration, counted from the segment's first frame (MP4 would round an
absolute start to milliseconds); stream/videomux.py adds the origin back, so a
resumed job writes exactly what an uninterrupted one would.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from stream.videofile import VideoFileError, VideoInfo

# swscale's default RGB<->YUV 4:2:0 paths round coarsely and drop chroma detail (about 1.7 levels of
# L error on a round trip); accurate rounding and full chroma interpolation bring it near 0.4.
TO_YUV = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP

CRF_DEFAULTS = {"libx264": 18, "libx265": 20, "libvpx-vp9": 31, "libsvtav1": 30, "libaom-av1": 30}
PRESET_DEFAULTS = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8"}
SEGMENT_FORMATS = ("mp4", "mov")  # keep input timestamps and B-frame dts exactly


@dataclass(frozen=True)
class EncodeSettings:
    """What the user asked for; None means a sensible default for the codec."""

    codec: str | None = None
    crf: int | None = None
    bitrate: str | None = None  # e.g. "8M", "2500k"
    preset: str | None = None


@dataclass(frozen=True)
class EncodePlan:
    """Everything needed to open a segment encoder, resolved once per output file."""

    codec: str
    options: dict[str, str]
    bit_rate: int | None
    segment_format: str

    def describe(self) -> dict:
        return {"codec": self.codec, "options": self.options, "bit_rate": self.bit_rate}


def plan_encoding(output: Path, settings: EncodeSettings, width: int, height: int, rate: Fraction) -> EncodePlan:
    """Choose codec and options for `output`; raise VideoFileError for impossible choices."""
    probe = io.BytesIO()
    probe.name = output.name  # lets FFmpeg guess the container from the file name
    try:
        with av.open(probe, "w") as container:
            supported, default_codec = container.supported_codecs, container.default_video_codec
            fmt = container.format.name
    except (av.error.FFmpegError, ValueError):
        raise VideoFileError(f"unknown output container for {output.name!r}; use a suffix like .mp4 or .mkv") from None
    codec = settings.codec
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available and "h264" in supported else default_codec
    try:
        encoder = av.Codec(codec, "w")
    except Exception:
        raise VideoFileError(f"unknown video encoder {codec!r}") from None
    if encoder.type != "video":
        raise VideoFileError(f"{codec!r} is not a video encoder")
    if encoder.canonical_name not in supported:
        raise VideoFileError(f"the {fmt} container ({output.suffix}) cannot hold {encoder.canonical_name} video; "
                             f"choose another --codec or output suffix")
    segment_format = next((f for f in SEGMENT_FORMATS if encoder.canonical_name in _supported(f)), None)
    if segment_format is None:
        raise VideoFileError(f"codec {codec!r} cannot be written in segments; choose another --codec")
    options: dict[str, str] = {}
    bit_rate = None
    if settings.bitrate:
        bit_rate = parse_bitrate(settings.bitrate)
    elif codec in CRF_DEFAULTS:
        options["crf"] = str(CRF_DEFAULTS[codec] if settings.crf is None else settings.crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant quality mode
    elif settings.crf is not None:
        raise VideoFileError(f"codec {codec!r} has no CRF setting; use --bitrate")
    else:  # about 0.15 bit per pixel: reasonable for mpeg4-class codecs
        bit_rate = int(width * height * float(rate) * 0.15)
    preset = settings.preset or PRESET_DEFAULTS.get(codec)
    if preset:
        options["preset"] = preset
    if codec == "libx264":
        # x264's macroblock-tree rate control reads uninitialised memory at the end of a
        # stream (seen with the bundled x264): the same frames then encode differently from
        # run to run, and a resumed film would differ from an uninterrupted one. Off, every
        # segment encodes the same bytes each time, for a few percent more bits.
        options["x264-params"] = "mbtree=0"
    if codec == "libx265":
        options["x265-params"] = "log-level=error"  # x265 prints a banner per segment otherwise
    return EncodePlan(codec, options, bit_rate, segment_format)


def _supported(fmt: str) -> set[str]:
    with av.open(io.BytesIO(), "w", format=fmt) as c:
        return set(c.supported_codecs)


def parse_bitrate(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise VideoFileError(f"bad bitrate {text!r}; write e.g. 8M or 2500k") from None
    if value <= 0:
        raise VideoFileError(f"bad bitrate {text!r}; it must be positive")
    return int(value)


def pick_pixel_format(codec: str, width: int, height: int) -> str:
    """4:2:0 where the codec and the frame size allow it (what players expect), else 4:4:4."""
    names = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    even = width % 2 == 0 and height % 2 == 0
    for name in (["yuv420p"] if even else []) + ["yuv444p"]:
        if name in names:
            return name
    return names[0] if names else "yuv420p"


class SegmentEncoder:
    """Encodes BGR frames into one segment file; timestamps are the input's minus `origin`,
    the first frame's timestamp (set by the first write)."""

    def __init__(self, path: Path, plan: EncodePlan, info: VideoInfo, width: int, height: int):
        self.container = av.open(str(path), "w", format=plan.segment_format)
        try:
            s = self.container.add_stream(plan.codec, rate=info.rate, options=dict(plan.options))
            s.width, s.height = width, height
            s.pix_fmt = self.pix_fmt = pick_pixel_format(plan.codec, width, height)
            s.time_base = s.codec_context.time_base = info.time_base
            if plan.bit_rate:
                s.bit_rate = plan.bit_rate
            # the colour matrix of the input, so decoders convert back the way we converted
            self.colorspace = info.colorspace if info.colorspace not in (2, 0) else None
            if self.colorspace is not None:
                s.codec_context.colorspace = self.colorspace
            s.codec_context.color_range = 1  # limited ("tv") range, what every player expects
            s.thread_type = "AUTO"
            self.stream = s
            self.time_base = info.time_base
            self.origin: int | None = None
            self._ranks: dict[int, int] = {}  # frame pts -> presentation index, to measure reordering
            self._written = self._muxed = 0
            self.reorder_delay = 0  # frames a packet may come before its turn in presentation order
        except Exception:
            self.container.close()
            raise

    def write(self, bgr: np.ndarray, pts: int, duration: int) -> None:
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame = frame.reformat(format=self.pix_fmt, dst_colorspace=self.colorspace, dst_color_range="MPEG",
                               interpolation=TO_YUV)
        if self.origin is None:
            self.origin = pts
        frame.pts, frame.time_base, frame.duration = pts - self.origin, self.time_base, duration
        self._ranks[frame.pts] = self._written
        self._written += 1
        self._mux(self.stream.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            rank = self._ranks.pop(p.pts, self._muxed)
            self.reorder_delay = max(self.reorder_delay, self._muxed - rank)
            self._muxed += 1
        self.container.mux(packets)

    def close(self) -> None:
        self._mux(self.stream.encode(None))
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # the file is discarded anyway
            pass


