"""Video files in and out with PyAV (FFmpeg's own demuxers, codecs and muxers).

- VideoReader decodes every frame in order with its own timestamps, and can
  restart just after a given frame (seek to the keyframe before it, then decode
  up to it; full decode from the start if the timestamps do not line up).
- SegmentEncoder encodes colorized frames into one segment file, keeping each
  frame's input timestamp and duration, counted from the segment's first frame
  (MP4 would round an absolute start to milliseconds); concatenate() adds the
  origin back, so a resumed job writes exactly what an uninterrupted one would.
- concatenate() remuxes the segments' packets into the final file and copies the
  input's audio streams packet for packet; an audio stream the output container
  cannot hold is re-encoded to the container's default audio codec.
"""
from __future__ import annotations

import heapq
import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation

# swscale's default RGB<->YUV 4:2:0 paths round coarsely and drop chroma detail (about 1.7 levels of
# L error on a round trip); accurate rounding and full chroma interpolation bring it near 0.4.
TO_YUV = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
TO_RGB = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT

CRF_DEFAULTS = {"libx264": 18, "libx265": 20, "libvpx-vp9": 31, "libsvtav1": 30, "libaom-av1": 30}
PRESET_DEFAULTS = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8"}
SEGMENT_FORMATS = ("mp4", "mov")  # keep input timestamps and B-frame dts exactly


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
        """Decode on from where the demuxer stands (the start, or where _seek left it)."""
        s = self.container.streams.video[0]
        info = self.info
        default_duration = max(1, int(round(1 / (info.rate * info.time_base))))
        last_pts = None
        try:
            for frame in self.container.decode(s):
                pts = frame.pts
                if pts is None:  # raw streams without timestamps: one nominal frame after the last
                    pts = info.start_pts if last_pts is None else last_pts + default_duration
                duration = int(frame.duration or 0) or default_duration
                last_pts = pts
                yield DecodedFrame(-1, pts, duration, float((pts - info.start_pts) * info.time_base), frame)
        except av.error.FFmpegError as exc:
            raise VideoFileError(f"cannot decode {self.path}: {ffmpeg_message(exc)}") from None

    def close(self) -> None:
        self.container.close()


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoFileError(f"input not found: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoFileError(f"cannot read {path}: {ffmpeg_message(exc)}") from None


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


@dataclass(frozen=True)
class SegmentTiming:
    """How to place a segment's packets on the output timeline (all in the input's time base)."""

    origin: int  # timestamp the segment's own timestamps count from
    reorder_delay: int  # from SegmentEncoder.reorder_delay


def concatenate(segments: list[tuple[Path, SegmentTiming]], time_base: Fraction, rate: Fraction,
                output: Path, audio_source: Path | None) -> list[str]:
    """Write `output`: the segments' video packets and the audio of `audio_source`, interleaved by time.

    Each segment's encoder chose decoding timestamps for its own frames only; they
    are recomputed here for the whole stream with one reordering delay, so they
    run on smoothly across segment boundaries (and so do the MP4 sample durations).

    Returns what happened to each audio stream ("aac copied", "pcm_s16le re-encoded to aac")."""
    inputs = [av.open(str(p)) for p, _ in segments]
    timings = [t for _, t in segments]
    try:
        # one demuxer per audio stream, so each packet source reads its own stream in order
        audio_count = 0
        if audio_source is not None:
            with av.open(str(audio_source)) as probe:
                audio_count = len(probe.streams.audio)
        audio_inputs = [av.open(str(audio_source)) for _ in range(audio_count)]
        inputs += audio_inputs
        # MP4/MOV index at the front, so players and browsers can start before the end arrives
        options = {"movflags": "+faststart"} if output.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
        with av.open(str(output), "w", options=options) as out:
            template = inputs[0].streams.video[0]
            video_out = out.add_stream_from_template(template)
            video_out.codec_context.framerate = rate  # the nominal rate, for containers that store one
            frame_duration = max(1, round(1 / (rate * time_base)))
            video = _segment_packets(inputs[:len(segments)], timings, time_base, frame_duration)
            sources = [_retarget(video, video_out)]
            audio_report = []
            for i, audio_in in enumerate(audio_inputs):
                packets, what = _audio_packets(out, audio_in.streams.audio[i], template, output.name)
                sources.append(packets)
                audio_report.append(what)
            if audio_inputs:
                out.metadata.update({k: v for k, v in audio_inputs[0].metadata.items() if k != "encoder"})
            for packet in heapq.merge(*sources, key=_packet_time):
                out.mux(packet)
        return audio_report
    finally:
        for c in inputs:
            c.close()


def _segment_packets(containers: list, timings: list[SegmentTiming], time_base: Fraction,
                     frame_duration: int) -> Iterator[av.Packet]:
    """All segments' packets in decoding order, on the output timeline.

    With a reordering delay D, the packet at decoding position i gets as dts the
    (i−D)-th smallest pts of the whole stream: never after its own pts (D covers
    the reordering), always increasing. Before the first frame, nominal frame steps."""
    delay = max((t.reorder_delay for t in timings), default=0)
    history: list[int] = []  # the last `delay` pts, in presentation order
    for c, timing in zip(containers, timings):
        stream = c.streams.video[0]
        scale = time_base / stream.time_base
        offset = int(round(timing.origin * scale))
        packets = [p for p in c.demux(stream) if p.size]  # one segment: a few seconds of video
        for p in packets:
            p.pts += offset
        presented = sorted(p.pts for p in packets)
        if not history and presented:
            step = max(1, int(round(frame_duration * scale)))
            history = [presented[0] - (delay - k) * step for k in range(delay)]
        timeline = history + presented
        for i, p in enumerate(packets):
            p.dts = timeline[i]
            yield p
        history = timeline[len(timeline) - delay:] if delay else []


def _retarget(packets: Iterator[av.Packet], stream) -> Iterator[av.Packet]:
    for p in packets:
        p.stream = stream
        yield p


def _packet_time(p: av.Packet) -> float:
    t = p.dts if p.dts is not None else p.pts
    return float((t or 0) * p.time_base)


def _audio_packets(out, stream, video_template, name: str) -> tuple[Iterator[av.Packet], str]:
    """Packets for one audio stream: copied when the container takes the codec, else re-encoded."""
    cc = stream.codec_context
    if _can_copy(name, video_template, stream):
        out_stream = out.add_stream_from_template(stream)
        return _retarget((p for p in stream.container.demux(stream) if p.size), out_stream), f"{cc.name} copied"
    out_stream = out.add_stream(out.default_audio_codec, rate=cc.sample_rate, layout=cc.layout)
    return _reencode_audio(stream, out_stream), f"{cc.name} re-encoded to {out_stream.codec_context.name}"


def _can_copy(name: str, video_template, audio_stream) -> bool:
    probe = io.BytesIO()
    probe.name = name
    try:
        with av.open(probe, "w") as c:
            c.add_stream_from_template(video_template)
            c.add_stream_from_template(audio_stream)
            c.start_encoding()
        return True
    except (av.error.FFmpegError, ValueError):
        return False


def _reencode_audio(stream, out_stream) -> Iterator[av.Packet]:
    sample_tb = Fraction(1, stream.codec_context.sample_rate)
    for frame in stream.container.decode(stream):
        if frame.pts is not None:  # keep the input's start offset, in samples
            frame.pts = int(round(frame.pts * stream.time_base / sample_tb))
            frame.time_base = sample_tb
        yield from out_stream.encode(frame)
    yield from out_stream.encode(None)
