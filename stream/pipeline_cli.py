"""`chromacast run`: run a pipeline from a YAML config, with command-line overrides.

Exit codes (every subcommand): 0 done, 1 a stage failed or a stream ended abnormally (e.g. its
camera never came back), 2 bad config or input, 130 stopped by SIGINT/SIGTERM (after a graceful
stop, files closed; also a forced exit by a second signal).
"""
from __future__ import annotations

import argparse
import logging
import re
import tempfile
from pathlib import Path

from engines.stabilise import StabiliserSettings
from stream.config import ConfigError, PipelineConfig, load_config, parse_config
from stream.logs import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_verbosity_options,
                         error_line, positive_float, positive_int, setup_logging, verbosity)
from stream.pipeline import Pipeline, PipelineError
from stream.signals import install_stop_handlers

log = logging.getLogger("chromacast")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chromacast run", description="Run a colorization pipeline: "
                                "sources → engine → ZeroMQ publisher, recorder, window.")
    p.add_argument("--config", "-c", type=Path, help="pipeline YAML (see configs/)")
    p.add_argument("--source", "-s", action="append", metavar="SRC",
                   help="replace the config's sources (keeping their stream ids, in order): webcam index, "
                        "rtsp:// URL, video file or image folder (repeat for several)")
    p.add_argument("--engine", choices=("auto", "tensorrt", "onnxruntime", "triton"), help="engine backend")
    p.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--short-side", type=positive_int, help="network input short side in pixels")
    p.add_argument("--threads", type=positive_int, help="CPU threads for the engine")
    p.add_argument("--stabilise", type=float, metavar="S",
                   help=f"colour stabiliser strength, 0 to <1 (0: off; default {StabiliserSettings.strength})")
    p.add_argument("--saturation", type=float, metavar="X",
                   help="colour strength: 0 grey, 1 as predicted (default), up to 2")
    p.add_argument("--reference", metavar="REF.jpg|auto",
                   help="colour reference image for every source, or auto (fixed cameras: their colour frames)")
    p.add_argument("--bind", metavar="URL", help="ZeroMQ endpoint to publish on")
    p.add_argument("--no-publish", action="store_true", help="do not publish over ZeroMQ")
    p.add_argument("--record", metavar="PATH", help="record each stream to PATH ({stream} = stream id)")
    p.add_argument("--no-record", action="store_true", help="do not record")
    p.add_argument("--window", action="store_true", help="show original | grey | colour live")
    p.add_argument("--no-window", action="store_true", help="no live window")
    for name, what in (("metrics", "Prometheus /metrics"), ("web", "browser viewer"), ("rtsp", "RTSP server")):
        p.add_argument(f"--{name}-port", type=int, metavar="PORT", help=f"serve the {what} on 127.0.0.1:PORT "
                       f"(or the config's {name}.host)")
    p.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="end each stream after N frames")
    p.add_argument("--realtime", action="store_true", help="play files at their fps, like a camera")
    p.add_argument("--loop", action="store_true", help="play files and folders in a loop")
    add_verbosity_options(p)
    return p


def source_entry(text: str) -> dict:
    """A --source value as a config entry: an integer is a webcam, rtsp:// an RTSP camera,
    a folder an image folder, anything else a video file."""
    if re.fullmatch(r"\d+", text):
        return {"webcam": int(text)}
    if re.match(r"^rtsps?://", text):
        return {"rtsp": text}
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", text)
    if scheme:  # never taken as a file name
        raise ConfigError(f"--source {text}: {scheme.group(1)}:// is not supported; give a webcam index, "
                          "an rtsp:// or rtsps:// URL, a video file or an image folder")
    return {"folder": text} if Path(text).is_dir() else {"file": text}


def overrides_from(args: argparse.Namespace) -> dict:
    out: dict = {}
    engine = {k: v for k, v in (("kind", args.engine), ("model", args.model and str(args.model)),
                                ("short_side", args.short_side), ("threads", args.threads)) if v is not None}
    if engine:
        out["engine"] = engine
    if args.no_publish:
        out["publish"] = None
    elif args.bind:
        out["publish"] = {"bind": args.bind}
    if args.no_record:
        out["record"] = None
    elif args.record:
        out["record"] = {"path": args.record}
    if args.no_window:
        out["window"] = None
    elif args.window:
        out["window"] = {}
    for name in ("metrics", "web", "rtsp"):
        if getattr(args, f"{name}_port") is not None:
            out[name] = {"port": getattr(args, f"{name}_port")}
    if args.duration is not None:
        out["duration_s"] = args.duration
    if args.stabilise is not None:
        out["state"] = {"stabiliser": {"strength": args.stabilise}}
    if args.saturation is not None:
        out["saturation"] = args.saturation
    return out


def load(args: argparse.Namespace) -> PipelineConfig:
    overrides = overrides_from(args)
    if args.source:
        overrides["sources"] = [source_entry(s) for s in args.source]
    if args.config is None:
        if not args.source:
            raise ConfigError("give --config FILE (see configs/) or --source SRC")
        config = parse_config("{}", "command line", overrides)
    else:
        if args.source:  # the config's stream ids stay, in order: its view/record hints still hold
            configured = load_config(args.config).sources
            for entry, source in zip(overrides["sources"], configured):
                entry["id"] = source.id
        config = load_config(args.config, overrides)
    for source in config.sources:  # options that apply to every source
        if args.max_frames is not None:
            source.max_frames = args.max_frames
        if args.reference:
            source.reference = args.reference
        if source.kind in ("file", "folder"):
            source.realtime = source.realtime or args.realtime
            source.loop = source.loop or args.loop
    return config


def unwritable_recording(config: PipelineConfig) -> str | None:
    """Why a stream's recording could not be written, checked before any frame is read."""
    if config.record is None:
        return None
    for source in config.sources:
        target = Path(config.record.path.format(stream=source.id))
        try:
            if target.is_dir():
                return f"record.path: {target} is a folder; give a file name such as {target}/{{stream}}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=target.parent).close()
        except OSError as exc:
            return f"record.path: cannot write {target}: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    try:
        config = load(args)
    except ConfigError as exc:
        error_line("run", str(exc))
        return EXIT_USAGE
    problem = unwritable_recording(config)
    if problem:
        error_line("run", problem)
        return EXIT_USAGE
    pipeline = Pipeline(config)
    # before the inputs open: a camera can take seconds to answer, and a Ctrl-C then must count
    interrupted = install_stop_handlers(pipeline.request_stop)
    try:
        pipeline.open()
    except PipelineError as exc:
        if interrupted.is_set():  # e.g. the camera's open timed out after the Ctrl-C
            return EXIT_INTERRUPTED
        error_line("run", str(exc))
        return EXIT_USAGE
    if interrupted.is_set():
        pipeline.close()
        log.info("interrupted before the first frame; nothing was written")
        return EXIT_INTERRUPTED
    try:
        pipeline.start()
        pipeline.wait()
    finally:
        pipeline.close()
    print(pipeline.stats.report(), flush=True)
    if pipeline.error:  # already logged when it happened
        return EXIT_FAILURE
    failed = {sid: s.ended for sid, s in pipeline.stats.streams.items() if s.ended}
    if failed:
        error_line("run", "; ".join(f"stream {sid} ended: {why}" for sid, why in failed.items()))
        return EXIT_FAILURE
    return EXIT_INTERRUPTED if interrupted.is_set() else EXIT_OK
