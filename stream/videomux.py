"""The final video file: segments remuxed, the input's audio kept (PyAV).

concatenate() remuxes the segments' packets into the final file and copies the input's
audio streams packet for packet; an audio stream the output container cannot hold is
re-encoded to the container's default audio codec.
"""
from __future__ import annotations

import heapq
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av


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
