"""Colorize one video file: every frame, in order, shot by shot, resumable.

One stream's frames are sequential (the recurrent state), so inference runs one
frame at a time; decoding runs ahead on one thread and encoding behind on another,
through bounded queues. Frames are encoded in segments of `segment_frames`; after
each, the engine state (and the colour stabiliser's) is saved in the work folder (stream.workfolder), so
`--resume` restarts after the last finished segment and writes exactly what an
uninterrupted run writes. At the end the segments are remuxed, with the input's
audio, into a temporary file that is renamed to the output.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from engines.backend import Engine, StreamState
from engines.colour import network_l8, to_l8
from engines.colour import scale_chroma
from engines.hints import HintCarrier, rasterise
from engines.reference import blend, debug_image
from engines.stabilise import ColourStabiliser, StabiliserSettings, usable_settings
from stream.background import BackgroundWorker, prefetch
from stream.hintsfile import FrameHints
from stream.reference import References
from stream.scenecut import DEFAULT_SCENE_THRESHOLD, SceneCutDetector
from stream.videoencode import EncodePlan, EncodeSettings, SegmentEncoder, plan_encoding
from stream.videofile import DecodedFrame, VideoFileError, VideoInfo, VideoReader
from stream.videomux import SegmentTiming, concatenate
from stream.workfolder import SegmentRecord, WorkFolder, partial_name, work_folder_for

log = logging.getLogger("chromacast.colorize")

SEGMENT_FRAMES = 300  # ~10 s of film per resumable unit; also a keyframe at least this often

Progress = Callable[[int, int], None]  # (frames done, frames expected; 0 if unknown)


@dataclass
class VideoJobOptions:
    short_side: int | None = None
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    segment_frames: int = SEGMENT_FRAMES
    resume: bool = False
    compare: Path | None = None
    hints: FrameHints | None = None
    stabiliser: StabiliserSettings = field(default_factory=StabiliserSettings)
    saturation: float = 1.0  # chroma scale of the output (0 grey, 1 as predicted, up to 2)
    references: References | None = None  # colour from reference images (stream.reference)
    reference_debug: Path | None = None  # the first referenced frame's confidence map, as PNG
    identity: dict = field(default_factory=dict)  # model, hints digest...: a resumed run must match


@dataclass
class VideoReport:
    frames: int = 0
    resumed_at: int = 0
    cuts: int = 0
    hinted_frames: int = 0
    referenced_frames: int = 0
    reference_cells: float = 0.0  # mean share of grid cells that took a reference colour
    unused_hints: int = 0
    skipped: int = 0  # undecodable frames, each replaced by its nearest good frame
    retimed: int = 0  # frames whose timestamps went backwards, moved after the one before
    audio: list[str] = field(default_factory=list)


def colorize_video(src: Path, dst: Path, engine: Engine, opts: VideoJobOptions,
                   progress: Progress | None = None) -> VideoReport:
    reader = VideoReader(src)
    try:
        info = reader.info
        size = engine.network_size(info.width, info.height, opts.short_side)
        if opts.hints:
            opts.hints.check_frame_size(info.width, info.height)
        plan = plan_encoding(dst, opts.encode, info.width, info.height, info.rate)
        cmp_plan = plan_encoding(opts.compare, opts.encode, 2 * info.width, info.height, info.rate) \
            if opts.compare else None
        stat = src.stat()
        job = {"input": str(src.resolve()), "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
               "engine": engine.name, "network_size": list(size), "scene_threshold": opts.scene_threshold,
               "encoding": plan.describe(), "compare": cmp_plan.describe() if cmp_plan else None,
               "segment_frames": opts.segment_frames, **opts.identity}
        folder = work_folder_for(dst)
        try:
            work = WorkFolder.open(dst, job, opts.resume)
            report = VideoReport()
            if not work.complete:
                _colorize_frames(reader, work, engine, size, plan, cmp_plan, opts, report, progress)
        except BaseException:  # also a Ctrl-C: with no finished segment there is nothing to resume
            if folder.is_dir() and not (folder / "state-00000.npz").exists():
                shutil.rmtree(folder, ignore_errors=True)
            raise
        report.skipped, report.retimed = reader.skipped, reader.retimed
    finally:
        reader.close()
    kinds = ["seg"] + (["cmp"] if opts.compare else [])
    records = work.finished()
    report.frames = records[-1].last_index + 1 if records else 0
    if report.frames == 0:
        work.remove()
        raise VideoFileError(f"{src}: no video frame could be decoded")
    for kind, target in zip(kinds, [dst, opts.compare]):
        tmp = partial_name(target)
        segments = [(work.segment_path(kind, r.number), SegmentTiming(r.first_pts, r.reorder_delays.get(kind, 0)))
                    for r in records]
        report.audio = concatenate(segments, info.time_base, info.rate, tmp, src)
        os.replace(tmp, target)
    work.remove()
    return report


def _colorize_frames(reader: VideoReader, work: WorkFolder, engine: Engine, size: tuple[int, int],
                     plan: EncodePlan, cmp_plan: EncodePlan | None, opts: VideoJobOptions,
                     report: VideoReport, progress: Progress | None) -> None:
    info = reader.info
    done = work.finished()
    state = _resume_state(engine, work, done, size)
    if state is None:
        done, state = [], engine.new_state(size)
    settings = usable_settings(opts.stabiliser, engine)
    stabiliser = ColourStabiliser(settings, engine.info.ab_stride) if settings else None
    carrier = HintCarrier()  # hints moved along the motion through the rest of their shot
    if done:
        extra = work.load_extra(done[-1].number)
        carrier.load_arrays(extra)
        if stabiliser:
            stabiliser.load_arrays(extra)
    start = done[-1].last_index + 1 if done else 0
    anchor = (done[-1].last_index, done[-1].last_pts) if done else None
    report.resumed_at = start
    report.cuts = done[-1].cuts if done else 0
    writer = _SegmentWriter(work, plan, cmp_plan, info)
    worker: BackgroundWorker = BackgroundWorker(writer.handle, depth=4, name="encode")
    detector = SceneCutDetector(opts.scene_threshold)
    hints = opts.hints if opts.hints else None
    seg = opts.segment_frames
    prev_time: float | None = None
    last: DecodedFrame | None = None
    segment_origin = 0
    state_copy = _state_saver(engine)
    if progress:
        progress(start, info.frames)
    decoded = prefetch(_converted(reader.frames(anchor), opts.compare is not None), 4, "decode")
    try:
        for f, bgr, l8 in decoded:
            cut = detector.update(l8)
            if f.index < start:  # the last frame of the finished part: only primes the detector
                prev_time = f.time_s
                continue
            if f.index % seg == 0:
                segment_origin = f.pts
            if cut:
                engine.reset_state(state)
                carrier.reset()  # a hint holds for its shot
                if stabiliser:
                    stabiliser.reset()
                report.cuts += 1
            frame_hints = hints.hints_for(f.index, f.time_s, prev_time, info.frame_duration_s,
                                          info.width, info.height) if hints else None
            report.hinted_frames += bool(frame_hints)
            l_net = network_l8(l8, size) if opts.references else None
            match = opts.references.match(f.index, f.time_s, l_net) if opts.references else None
            if match is not None:
                _count_reference(report, match, opts, l_net)
            if (stabiliser or carrier.active or frame_hints or match is not None
                    or (opts.saturation != 1.0 and not engine.merges_on_device)):
                l_net = network_l8(l8, size) if l_net is None else l_net
                maps = carrier.step(l_net, rasterise(frame_hints, *size) if frame_hints else None)
                if match is not None and match.mask.any():  # the reference's colours under the user's hints
                    reference = rasterise([match.hint()], *size)
                    if maps is not None:
                        on = maps[1][0] > 0
                        reference[0][:, on], reference[1][:, on] = maps[0][:, on], maps[1][:, on]
                    maps = reference
                ab = engine.predict([l_net], [state], hint_maps=[maps])[0]
                if match is not None:
                    ab = blend(ab, match)
                if stabiliser:
                    if frame_hints:  # a hinted frame shows its hints at once; they are carried from there
                        stabiliser.reset()
                    ab = stabiliser.apply(l_net, ab)
                out = engine.merge(l8, scale_chroma(ab, opts.saturation))
            else:
                out = engine.colorize([l8], [state])[0]  # no hints, no reference, nothing after the network
            worker.submit(("frame", f.index // seg, out, bgr, f.pts, f.duration))
            if (f.index + 1) % seg == 0:
                worker.submit(("end", SegmentRecord(f.index // seg, segment_origin, f.index, f.pts, f.time_s,
                                                    cuts=report.cuts),
                               state_copy(state),
                               {**carrier.to_arrays(), **(stabiliser.to_arrays() if stabiliser else {})}))
            prev_time, last = f.time_s, f
            if progress:
                progress(f.index + 1, max(info.frames, f.index + 1))
        if last is not None and (last.index + 1) % seg:
            worker.submit(("end", SegmentRecord(last.index // seg, segment_origin, last.index, last.pts,
                                                last.time_s, cuts=report.cuts), state_copy(state), None))
        worker.close()
    except BaseException:
        decoded.close()  # stops the decode thread before the reader closes
        try:  # what is queued is good work: let finished segments reach the disk
            worker.close()
        finally:
            writer.abort()
        raise
    if hints and last is not None:
        report.unused_hints = hints.count_after(last.index, last.time_s, info.frame_duration_s)
    work.mark_complete()


def _count_reference(report: VideoReport, match, opts: VideoJobOptions, l_net: np.ndarray) -> None:
    n = report.referenced_frames
    report.reference_cells = (report.reference_cells * n + match.coverage) / (n + 1)
    report.referenced_frames = n + 1
    if opts.reference_debug is not None and n == 0:
        cv2.imwrite(str(opts.reference_debug), debug_image(l_net, match))


def _converted(frames: Iterator[DecodedFrame], keep_bgr: bool):
    """(frame, input BGR or None, L plane) per decoded frame; runs on the decode thread."""
    for f in frames:
        bgr = f.to_bgr()
        yield f, (bgr if keep_bgr else None), to_l8(bgr)


def _resume_state(engine: Engine, work: WorkFolder, done: list[SegmentRecord],
                  size: tuple[int, int]) -> StreamState | None:
    if not done:
        return None
    array = work.load_state(done[-1].number)
    if array is None:
        log.warning("the %s engine could not save its state: starting over", engine.name)
        return None
    return engine.state_from_numpy(array, size)


def _state_saver(engine: Engine) -> Callable[[StreamState], np.ndarray | None]:
    """engine.state_to_numpy, or (with one warning) nothing for an engine that cannot export states."""
    warned = False

    def save(state: StreamState) -> np.ndarray | None:
        nonlocal warned
        try:
            return engine.state_to_numpy(state)
        except NotImplementedError:
            if not warned:
                log.warning("the %s engine cannot save its state: --resume will start over", engine.name)
                warned = True
            return None

    return save


class _SegmentWriter:
    """Runs on the encode thread: frames into the open segment(s), segment ends into the work folder."""

    def __init__(self, work: WorkFolder, plan: EncodePlan, cmp_plan: EncodePlan | None, info: VideoInfo):
        self.work, self.plan, self.cmp_plan, self.info = work, plan, cmp_plan, info
        self.encoders: dict[str, SegmentEncoder] = {}

    def handle(self, op: tuple) -> None:
        if op[0] == "frame":
            _, number, out, bgr, pts, duration = op
            if not self.encoders:
                self._open(number)
            self.encoders["seg"].write(out, pts, duration)
            if "cmp" in self.encoders:
                self.encoders["cmp"].write(np.hstack([bgr, out]), pts, duration)
        else:
            _, record, state, extra = op
            for enc in self.encoders.values():
                enc.close()
            record = replace(record, reorder_delays={k: e.reorder_delay for k, e in self.encoders.items()})
            self.encoders = {}
            self.work.finish_segment(record, state, list(record.reorder_delays), extra)

    def _open(self, number: int) -> None:
        w, h = self.info.width, self.info.height
        self.encoders["seg"] = SegmentEncoder(self.work.temp_segment_path("seg", number), self.plan, self.info, w, h)
        if self.cmp_plan:
            self.encoders["cmp"] = SegmentEncoder(self.work.temp_segment_path("cmp", number), self.cmp_plan,
                                                  self.info, 2 * w, h)

    def abort(self) -> None:
        for enc in self.encoders.values():
            enc.abort()
        self.encoders = {}
