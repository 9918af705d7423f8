"""`chromacast colorize`: colorize a video file, an image, or a folder of them.

    chromacast colorize film.mp4 film-colour.mp4 --hints film-hints.yaml --compare review.mp4
    chromacast colorize scans/ scans-colour/

Videos keep frame rate, frame count, duration and audio (docs/colorize.md);
images keep size, format, bit depth and alpha. Every problem a user can cause
ends in one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import time
from pathlib import Path

import av
from tqdm import tqdm  # progress bar with rate and ETA, handles terminals and pipes

from stream.logs import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, add_verbosity_options, error_line,
                         plural, setup_logging, verbosity)
from engines.backend import DEFAULT_MODEL, Engine, EngineError, open_engine
from engines.colour import MAX_SATURATION
from engines.reference import FeatureModel, ReferenceError
from engines.stabilise import FLOW_PRESETS, StabiliserSettings
from stream.hintsfile import HintsError, HintsFile, load_hints
from stream.imagefile import ImageFileError, colorize_image, is_image
from stream.reference import References
from stream.scenecut import DEFAULT_SCENE_THRESHOLD
from stream.videoencode import EncodeSettings
from stream.videofile import VideoFileError
from stream.videojob import SEGMENT_FRAMES, VideoJobOptions, colorize_video
from stream.workfolder import WorkFolderError, work_folder_for

log = logging.getLogger("chromacast.colorize")
PROG = "chromacast colorize"
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
                  ".wmv", ".flv", ".ogv", ".3gp", ".dv", ".mxf", ".vob"}
PROGRESS_LINE_S = 5.0  # without a terminal, a progress line this often
MAX_SHORT_SIDE = 2048  # as a pipeline's engine.short_side: far above what the model was trained at
USER_ERRORS = (VideoFileError, ImageFileError, HintsError, EngineError, WorkFolderError, ReferenceError)


class UsageError(RuntimeError):
    """A bad combination of paths or options; one line for the user."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Colorize a video file, an image, or a folder of them.")
    p.add_argument("input", type=Path, help="video file, image, or folder of videos and images")
    p.add_argument("output", type=Path, help="output file (or folder, for a folder input)")
    p.add_argument("--hints", type=Path, metavar="FILE", help="colour hints (JSON/YAML, see docs/colorize.md)")
    p.add_argument("--reference", type=Path, metavar="REF.jpg", help="colour reference image for every frame")
    p.add_argument("--references", type=Path, metavar="FILE",
                   help="frame or time ranges -> reference images (YAML/JSON, see docs/colorize.md)")
    p.add_argument("--reference-debug", type=Path, metavar="OUT.png",
                   help="write the first referenced frame's match confidence map here")
    p.add_argument("--compare", type=Path, metavar="OUT.mp4", help="also write a side-by-side input | output video")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished segment")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--scene-threshold", type=float, default=DEFAULT_SCENE_THRESHOLD, metavar="X",
                   help=f"scene-cut score (0..1) above which the state resets (default {DEFAULT_SCENE_THRESHOLD}; "
                        f"0 turns detection off)")
    p.add_argument("--stabilise", type=float, default=StabiliserSettings.strength, metavar="S",
                   help=f"colour stabiliser strength in [0, 1): previous colours carried along the motion "
                        f"(default {StabiliserSettings.strength}; 0 turns it off)")
    p.add_argument("--stabilise-flow", default=StabiliserSettings.flow, metavar="F",
                   help=f"the stabiliser's optical flow: {', '.join(FLOW_PRESETS)} (default {StabiliserSettings.flow}; "
                        f"medium is steadier, its flow takes 3-4x as long)")
    p.add_argument("--saturation", type=float, default=1.0, metavar="X",
                   help="colour strength: 0 grey, 1 as predicted (default), up to 2")
    p.add_argument("--short-side", type=int, metavar="N", help="network input short side (default: the model's)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="ONNX", help="model file (ONNX)")
    p.add_argument("--engine", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for ONNX Runtime (default: all cores)")
    p.add_argument("--codec", help="video encoder (default libx264 where the container takes H.264)")
    p.add_argument("--crf", type=int, metavar="N", help="constant quality (x264/x265 default 18/20; 0 is lossless)")
    p.add_argument("--bitrate", metavar="RATE", help="target bitrate instead of CRF, e.g. 8M")
    p.add_argument("--preset", help="encoder speed preset (x264/x265 default medium)")
    p.add_argument("--segment-frames", type=int, default=SEGMENT_FRAMES, metavar="N",
                   help=f"frames per resumable segment (default {SEGMENT_FRAMES})")
    add_verbosity_options(p)  # -q: no progress bars or summary lines
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops like a Ctrl-C, never silently
    try:
        return run(args)
    except (UsageError, *USER_ERRORS) as exc:
        error_line("colorize", str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error_line("colorize", "interrupted; finished segments are kept, run again with --resume to continue")
        return EXIT_INTERRUPTED
    except av.error.FFmpegError as exc:
        error_line("colorize", f"{exc.strerror or exc}{': ' + exc.filename if exc.filename else ''}")
    except OSError as exc:
        error_line("colorize", f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
    return EXIT_FAILURE


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    check_options(args)
    jobs = plan_jobs(args.input, args.output)
    if not args.overwrite:
        finished = [] if not args.resume else [d for _, d in jobs if d.exists() and not work_folder_for(d).exists()]
        existing = [d for _, d in jobs if d.exists() and not (args.input.is_dir() and d in finished)]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise UsageError(f"output {existing[0]}{more} already exists; add --overwrite to replace it")
    if args.compare and (len(jobs) != 1 or is_image(jobs[0][0])):
        raise UsageError("--compare needs a single video input")
    if args.compare and args.compare.resolve() in (jobs[0][1].resolve(), jobs[0][0].resolve()):
        raise UsageError("--compare must name a file other than the input and the output")
    hints = load_hints(args.hints) if args.hints else None
    if hints and args.input.is_dir():
        missing = sorted(hints.named_files() - {src.name for src, _ in jobs})
        if missing:
            raise UsageError(f"hints file {args.hints} names {missing[0]!r}, which is not in {args.input}")
    args.loaded_references = load_reference_option(args)
    engine = open_engine(args.model, args.engine, threads=args.threads)
    try:
        return run_jobs(jobs, engine, hints, args)
    finally:
        engine.close()


def check_options(args: argparse.Namespace) -> None:
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise UsageError(f"--crf {args.crf} is out of range 0..63")
    if args.crf is not None and args.bitrate:
        raise UsageError("give --crf or --bitrate, not both")
    if args.short_side is not None and not 32 <= args.short_side <= MAX_SHORT_SIDE:
        raise UsageError(f"--short-side {args.short_side} is out of range 32..{MAX_SHORT_SIDE}")
    if args.segment_frames < 1:
        raise UsageError("--segment-frames must be at least 1")
    if not 0 <= args.scene_threshold <= 1:
        raise UsageError(f"--scene-threshold {args.scene_threshold} is out of range 0..1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if not 0 <= args.saturation <= MAX_SATURATION:
        raise UsageError(f"--saturation {args.saturation:g} is out of range 0..{MAX_SATURATION:g}")
    try:  # the settings' own rule, checked once; the jobs use what it kept
        args.stabiliser = StabiliserSettings(args.stabilise, flow=args.stabilise_flow)
    except ValueError as exc:
        raise UsageError(f"--stabilise {args.stabilise} --stabilise-flow {args.stabilise_flow}: {exc}") from None


def load_reference_option(args: argparse.Namespace) -> References | None:
    """--reference / --references, loaded and checked before any work (ReferenceError: one line)."""
    if args.reference and args.references:
        raise UsageError("give --reference or --references, not both")
    if args.reference_debug and not (args.reference or args.references):
        raise UsageError("--reference-debug needs --reference or --references")
    if args.reference_debug and (args.reference_debug.suffix.lower() != ".png" or not args.reference_debug.parent.is_dir()):
        raise UsageError(f"--reference-debug {args.reference_debug}: needs a .png name in an existing folder")
    if not (args.reference or args.references):
        return None
    from stream.reference import load_references, single_reference

    features = FeatureModel(threads=args.threads)
    return single_reference(args.reference, features) if args.reference else load_references(args.references, features)


def plan_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one for a file, one per video/image for a folder (same names)."""
    if not src.exists():
        raise UsageError(f"input not found: {src}")
    if src.is_dir():
        if (dst.exists() and not dst.is_dir()) or (not dst.exists() and (
                is_image(dst) or dst.suffix.lower() in VIDEO_SUFFIXES)):
            raise UsageError(f"output {dst} must be a folder for a folder input")
        items = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")
                       and (is_image(p) or p.suffix.lower() in VIDEO_SUFFIXES))
        if not items:
            raise UsageError(f"no images or videos in {src}")
        try:
            dst.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {dst}: {exc.strerror or exc}") from None
        return [(p, dst / p.name) for p in items]
    if dst.is_dir():
        dst = dst / src.name
    if not dst.parent.is_dir():
        what = "is not a folder" if dst.parent.exists() else "does not exist"
        raise UsageError(f"cannot write {dst}: {dst.parent} {what}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise UsageError("output would overwrite the input")
    if is_image(src) != is_image(dst):
        kind = "an image" if is_image(src) else "a video"
        raise UsageError(f"input is {kind} but output {dst.name!r} is not; give it a matching suffix")
    return [(src, dst)]


def run_jobs(jobs: list[tuple[Path, Path]], engine: Engine, hints: HintsFile | None,
             args: argparse.Namespace) -> int:
    folder = args.input.is_dir()
    identity = job_identity(args.model, hints, args.threads, args.stabiliser, args.saturation)
    refs = getattr(args, "loaded_references", None)
    if refs is not None:
        identity["reference"] = refs.digest
    failures = skipped = 0
    # a folder gets a bar over its files; each video also gets its own bar over its frames
    files = tqdm(jobs, desc=args.input.name, unit="file", dynamic_ncols=True,
                 disable=args.quiet or not folder or not sys.stderr.isatty(), position=0)
    for src, dst in files:
        if folder and args.resume and dst.exists() and not work_folder_for(dst).exists():
            skipped += 1  # finished by the run being resumed
            continue
        file_hints = hints.for_file(src.name if folder else None) if hints else None
        try:
            if is_image(src):
                summary = colorize_image(src, dst, engine, args.short_side, file_hints, args.saturation, refs)
            else:
                summary = _colorize_video(src, dst, engine, file_hints, identity, args, nested=folder)
        except USER_ERRORS as exc:
            if not folder:
                raise
            failures += 1
            tqdm.write(f"{PROG}: error: {exc}", file=sys.stderr)
            continue
        if not args.quiet:
            tqdm.write(f"{src.name} -> {dst}: {summary}", file=sys.stderr)
    files.close()
    if skipped and not args.quiet:
        print(f"{plural(skipped, 'file')} already done, skipped", file=sys.stderr)
    if folder and not args.quiet:
        print(f"{plural(len(jobs) - failures - skipped, 'file')} colorized into {args.output}", file=sys.stderr)
    if failures:
        error_line("colorize", f"{failures} of {len(jobs)} files failed")
        return EXIT_FAILURE
    return 0


def _colorize_video(src: Path, dst: Path, engine: Engine, hints, identity: dict, args: argparse.Namespace,
                    nested: bool = False) -> str:
    opts = VideoJobOptions(short_side=args.short_side, scene_threshold=args.scene_threshold,
                           encode=EncodeSettings(args.codec, args.crf, args.bitrate, args.preset),
                           segment_frames=args.segment_frames, resume=args.resume, compare=args.compare,
                           hints=hints if hints else None, identity=identity,
                           stabiliser=args.stabiliser, saturation=args.saturation,
                           references=getattr(args, "loaded_references", None), reference_debug=args.reference_debug)
    bar: tqdm | None = None
    next_line = time.monotonic() + PROGRESS_LINE_S

    def progress(done: int, total: int) -> None:
        nonlocal bar, next_line
        if args.quiet:
            return
        if not sys.stderr.isatty():  # a log or a pipe: a plain line now and then, no bar redraws
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_LINE_S
                log.info("%s: frame %d%s", src.name, done, f" of {total}" if total else "")
            return
        if bar is None:  # created once the frame count is known, so the ETA shows from the start
            bar = tqdm(desc=src.name, total=total or None, initial=done, unit="frame", dynamic_ncols=True,
                       position=1 if nested else 0, leave=not nested)
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        report = colorize_video(src, dst, engine, opts, progress)
    finally:
        if bar is not None:
            bar.close()
    parts = [plural(report.frames, "frame"), plural(report.cuts + 1, "shot")]
    if report.resumed_at:
        parts.append(f"resumed at frame {report.resumed_at}")
    if report.hinted_frames:
        parts.append(f"hints on {report.hinted_frames} frames")
    if report.referenced_frames:
        parts.append(f"reference on {report.referenced_frames} frames ({report.reference_cells:.0%} of cells matched)")
    if report.skipped:
        parts.append(f"{plural(report.skipped, 'undecodable frame')} replaced by the nearest good one")
    if report.retimed:
        parts.append(f"{plural(report.retimed, 'frame')} with out-of-order timestamps retimed")
    if report.unused_hints:
        parts.append(f"{report.unused_hints} hints after the last frame were not used")
    parts.append("audio: " + (", ".join(report.audio) if report.audio else "none"))
    if args.compare:
        parts.append(f"side by side: {args.compare}")
    return "; ".join(parts)


def job_identity(model: Path, hints: HintsFile | None, threads: int | None,
                 stabiliser: StabiliserSettings = StabiliserSettings(), saturation: float = 1.0) -> dict:
    """What, beyond the input and encoding, a resumed video job must share with the interrupted one."""
    identity = {"model": model_identity(model), "hints": hints.digest if hints else None, "threads": threads,
                "stabilise": stabiliser.strength, "stabilise_flow": stabiliser.flow}
    if saturation != 1.0:  # absent at 1, so work folders of earlier versions still resume
        identity["saturation"] = saturation
    return identity


def model_identity(model: Path) -> str:
    """Content hash of the model file, so a resumed run refuses different weights."""
    h = hashlib.sha256()
    try:
        with open(model, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise EngineError(f"cannot read model {model}: {exc.strerror or exc}") from None
    return h.hexdigest()[:16]
