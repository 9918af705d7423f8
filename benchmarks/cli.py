"""`chromacast bench`: one benchmark case of the real pipeline, printed and written as JSON.

    chromacast bench --streams 1 --size 720p --fps 30 --seconds 6 --vs-seed --json out.json

N streams play a greyscale clip (generated once per size, or --input files) at their frame
rate like a live camera (drop-oldest, drops counted), or with --max as fast as possible like
a file job (never drops). The pipeline publishes over ZeroMQ on loopback to one subscriber
that receives every frame. Figures, over the window after the warm-up:

  fps sustained       frames captured in the window and published, per second
  latency p50/95/99   capture → publish, from the frame headers
  stage shares        each segment's share of the mean latency (benchmarks/stats.py)
  busy, bottleneck    how busy each serial stage was; the busiest one
  frames              in / out / dropped, for the whole run and the window
  cpu per frame       the process's CPU time per frame published (all its threads)
  floor               --floor: CPU per frame of decode + one Lab conversion + one JPEG at the
                      output size on the same clip (benchmarks/floor.py), and the pipeline's
                      CPU per frame as a multiple of it
  seed, ratio         --vs-seed: the OpenCV-DNN ECCV16 route's fps on the same frames,
                      measured after the pipeline in the same process (benchmarks/seed.py)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.case import BenchError, CaseSpec, run_case
from benchmarks.clips import SIZES
from benchmarks.stats import SEGMENT_LABELS
from engines.stabilise import StabiliserSettings
from stream.logs import EXIT_USAGE, add_verbosity_options, error_line, setup_logging, verbosity


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chromacast bench", description="Benchmark one pipeline case: "
                                "fps, end-to-end latency, stage shares, drops.")
    p.add_argument("--streams", type=int, default=1, metavar="N", help="streams at once (default 1)")
    p.add_argument("--size", choices=tuple(SIZES), default="720p", help="generated clip size (default 720p)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, metavar="F",
                      help="play at F fps like a live camera (default 30; the input's own rate with --input)")
    rate.add_argument("--max", action="store_true", help="as fast as possible, like a file job (no drops)")
    p.add_argument("--seconds", type=float, default=6.0, metavar="S", help="measured seconds (default 6)")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="seconds before measuring (default 1)")
    p.add_argument("--vs-seed", action="store_true", help="also measure the seed approach (OpenCV DNN ECCV16)")
    p.add_argument("--seed-seconds", type=float, default=5.0, metavar="S", help="seed measurement time")
    p.add_argument("--short-side", type=int, metavar="N", help="network input short side (default: pipeline's)")
    p.add_argument("--batch", type=int, metavar="N", help="engine max batch (default: pipeline's)")
    p.add_argument("--threads", type=int, metavar="N", help="engine CPU threads (default: all cores)")
    p.add_argument("--stabilise", "--stabiliser", dest="stabiliser", type=float, metavar="S",
                   help=f"colour stabiliser strength, 0 = off (default: the pipeline's, {StabiliserSettings.strength})")
    p.add_argument("--reference", metavar="REF.jpg|auto", help="colour reference for every stream (its cost)")
    p.add_argument("--engine", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="int8: the INT8 model beside the FP32 one (chromacast export --int8)")
    p.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--input", type=Path, action="append", metavar="FILE",
                   help="play this video instead of a generated clip (repeat; cycled over streams)")
    p.add_argument("--floor", action="store_true",
                   help="also measure the floor: decode + one Lab conversion + one JPEG per frame")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="start N processes that each keep one core busy during the run (default 0)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures (and machine info) here")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a latency histogram + stage breakdown")
    add_verbosity_options(p)
    return p


def spec_from(args: argparse.Namespace) -> CaseSpec:
    fps = None if args.max else (args.fps if args.fps is not None else (None if args.input else 30.0))
    return CaseSpec(streams=args.streams, size=args.size, fps=fps, realtime=not args.max, seconds=args.seconds,
                    warmup_s=args.warmup, short_side=args.short_side, batch=args.batch, threads=args.threads,
                    stabiliser=args.stabiliser,
                    engine=args.engine, model=args.model, inputs=list(args.input or []), vs_seed=args.vs_seed,
                    seed_seconds=args.seed_seconds, reference=args.reference, floor=args.floor, load=args.load,
                    precision=args.precision)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def describe(result: dict) -> str:
    """The figures as a few lines of text."""
    case, fps, lat, frames = result["case"], result["fps"], result["latency_ms"], result["frames"]
    mode = (f"real-time {sum(case['source_fps']) / len(case['source_fps']):g} fps" if case["realtime"]
            else "as fast as possible")
    net_w, net_h = case["network_size"]
    lines = [f"{case['streams']} stream{'s' if case['streams'] > 1 else ''} of {case['width']}x{case['height']}, "
             f"{mode}, {fps['window_s']:.1f} s measured; engine {case['engine']}, network {net_w}x{net_h}, "
             f"batch <= {case['max_batch']}"]
    offered = f" (source {fps['offered']:.1f})" if fps.get("offered") else ""
    lines.append(f"  fps sustained  {fps['sustained']:.1f}{offered}, {fps['per_stream']:.1f} per stream")
    lines.append(f"  latency        capture -> publish p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, "
                 f"p99 {_ms(lat['p99'])} ({lat['count']} frames)")
    shares = result["stages"]["share"]
    means = result["stages"]["mean_ms"]
    lines.append("  stages         " + "; ".join(f"{SEGMENT_LABELS[k].split(' (')[0]} {means[k]:.1f} ms "
                                                f"({100 * shares[k]:.0f}%)" for k in shares))
    if result["busy"]:
        busy = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["busy"].items())
        lines.append(f"  busy           {busy} -> bottleneck: {result['bottleneck']}")
    w = frames["window"]
    lines.append(f"  frames         in {frames['in']}, out {frames['out']}, dropped {frames['dropped']} "
                 f"(measured window: in {w['in']}, out {w['out']}, dropped {w['dropped']})")
    cpu = result["cpu"]
    if cpu.get("ms_per_frame") is not None:
        load = f", {cpu['load_processes']} busy-core load process(es) running" if cpu.get("load_processes") else ""
        lines.append(f"  cpu            {cpu['ms_per_frame']:.1f} ms per frame{load}")
    floor = result.get("floor")
    if floor:
        multiple = floor.get("multiple")
        lines.append(f"  floor          {floor['total_ms']:.1f} ms per frame (decode {_ms(floor['decode_ms'])}, "
                     f"Lab {_ms(floor['lab_ms'])}, JPEG {_ms(floor['jpeg_ms'])})"
                     + ("" if multiple is None else f" -> pipeline {multiple:.2f}x the floor"))
    seed = result.get("seed")
    if seed:
        capped = " (pipeline capped by the source rate: use --max)" if seed["pipeline_capped_by_source"] else ""
        lines.append(f"  seed approach  {seed['fps']:.2f} fps ({seed['route']}, {seed['input']}) -> "
                     f"ratio {'n/a' if seed['ratio'] is None else format(seed['ratio'], '.1f')}x{capped}")
    goal = result.get("goal")
    if goal:
        parts = [f"{k} {'yes' if v else 'no'}" for k, v in goal.items() if k != "met" and v is not None]
        lines.append(f"  goal           {'met' if goal['met'] else 'not met'}: {', '.join(parts)}"
                     + ("" if seed else "; seed ratio not measured (--vs-seed)"))
    return "\n".join(lines)


def unwritable(path: Path) -> str | None:
    """Why `path` could not be written, found without writing it (None: it can be)."""
    if path.is_dir():
        return "is a folder"
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(verbosity(args))
    if args.streams < 1 or args.seconds <= 0 or args.warmup < 0 or args.load < 0:
        error_line("bench", "--streams must be >= 1, --seconds > 0, --warmup >= 0, --load >= 0")
        return EXIT_USAGE
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        problem = path and unwritable(path)
        if problem:  # before the run: its results must not be lost at the end
            error_line("bench", f"{option} {path}: {problem}")
            return EXIT_USAGE
    try:
        result = run_case(spec_from(args))
    except BenchError as exc:
        error_line("bench", str(exc))
        return exc.exit_code
    from benchmarks import report  # matplotlib only when writing

    print(describe(result), flush=True)
    if args.json:
        report.write_json(args.json, {"machine": report.machine_info(), **result})
        print(f"figures written to {args.json}", flush=True)
    if args.plot:
        try:
            report.plot_case(result, args.plot)
        except ImportError:
            error_line("bench", "--plot needs matplotlib: pip install 'chromacast[dev]'")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
