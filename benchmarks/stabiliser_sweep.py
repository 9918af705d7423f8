"""Colour stabiliser sweep: E_warp and colourfulness for a grid of settings, and the flow's cost.

    .venv/bin/python -m benchmarks.stabiliser_sweep                     # training clips, 60 frames each
    .venv/bin/python -m benchmarks.stabiliser_sweep --flows fast --strengths 0.85 --tolerances 10

Each video goes through the network once (state on); every setting is scored on that same
output, as `chromacast eval` scores its "stabilised" variant, so the table's rows differ only
by the stabiliser. The default setting is meant to be chosen here, on the training clips, and
only then measured on the eval videos by `chromacast eval`. The flow's cost is timed per
preset on the first video's frames at the network's input size (median of all pairs).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from engines import colour
from engines.backend import EngineError, open_engine
from engines.evaluate import EvalError, evaluate_video, read_frames
from engines.stabilise import FLOW_PRESETS, StabiliserSettings
from stream.logs import setup_logging

TRAIN_VIDEOS = Path("../shared/data/train/videos")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stabiliser_sweep",
                                description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=TRAIN_VIDEOS,
                   help="folder of colour videos (default: the training clips)")
    p.add_argument("--limit", type=int, default=60, help="frames per video")
    p.add_argument("--short-side", type=int, default=256, help="evaluation resolution (short side)")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped model)")
    p.add_argument("--flows", nargs="+", default=list(FLOW_PRESETS), choices=list(FLOW_PRESETS))
    p.add_argument("--strengths", nargs="+", type=float, default=[0.8, 0.85, 0.9])
    p.add_argument("--tolerances", nargs="+", type=float, default=[6, 10, 16])
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def flow_cost_ms(l8_frames: list[np.ndarray], size: tuple[int, int]) -> dict[str, float]:
    """Median time of one DIS flow between consecutive frames at the network size, per preset."""
    frames = [colour.network_l8(l8, size) for l8 in l8_frames]
    cost = {}
    for name, preset in FLOW_PRESETS.items():
        dis = cv2.DISOpticalFlow_create(preset)
        times = []
        for prev, cur in zip(frames, frames[1:]):
            start = time.perf_counter()
            dis.calc(cur, prev, None)
            times.append(time.perf_counter() - start)
        cost[name] = float(np.median(times) * 1e3) if times else float("nan")
    return cost


def run(args: argparse.Namespace) -> dict:
    if not args.videos.is_dir():
        raise EvalError(f"video folder not found: {args.videos} (use --videos DIR)")
    videos = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise EvalError(f"no videos in {args.videos}")
    try:
        grid = [StabiliserSettings(s, t, f)
                for f, s, t in itertools.product(args.flows, args.strengths, args.tolerances)]
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    engine = open_engine(args.model)
    net = engine.info.default_short_side
    per_video = {}
    try:
        for path in videos:
            print(f"{path.name} ...", file=sys.stderr, flush=True)
            per_video[path.stem] = evaluate_video(engine, path, args.short_side, args.limit, net, sweep=grid)
        frames = [colour.to_l8(f) for f in read_frames(videos[0], args.short_side, args.limit)]
        size = engine.network_size(frames[0].shape[1], frames[0].shape[0], net)
    finally:
        engine.close()
    scored = [r for r in per_video.values() if "sweep" in r]
    if not scored:
        raise EvalError("no video has two frames to compare")
    off = np.mean([r["state_off"]["ewarp"] for r in scored])
    rows = []
    for i, settings in enumerate(grid):
        mean = {k: float(np.mean([r["sweep"][i][k] for r in scored])) for k in ("ewarp", "cdc", "colourfulness")}
        rows.append({"flow": settings.flow, "strength": settings.strength, "tolerance": settings.tolerance,
                     **mean, "ratio": mean["ewarp"] / off})
    state_on = {k: float(np.mean([r["state_on"][k] for r in scored])) for k in ("ewarp", "colourfulness")}
    return {"videos": str(args.videos), "frames_per_video": args.limit, "short_side": args.short_side,
            "network_size": list(size), "state_on_ratio": state_on["ewarp"] / off,
            "state_on_colourfulness": state_on["colourfulness"],
            "flow_ms": flow_cost_ms(frames, size), "settings": rows}


def print_table(report: dict) -> None:
    print(f"state on: E_warp / off {report['state_on_ratio']:.3f}, "
          f"colourfulness {report['state_on_colourfulness']:.2f}")
    print(f"{'flow':<10}{'strength':>9}{'tolerance':>10}{'E_warp/off':>11}{'colour':>8}{'CDC x1e3':>9}")
    for r in report["settings"]:
        print(f"{r['flow']:<10}{r['strength']:>9g}{r['tolerance']:>10g}{r['ratio']:>11.4f}"
              f"{r['colourfulness']:>8.2f}{r['cdc'] * 1e3:>9.3f}")
    w, h = report["network_size"]
    print("flow per frame at %dx%d: " % (w, h) + ", ".join(f"{k} {v:.1f} ms" for k, v in report["flow_ms"].items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        report = run(args)
    except (EvalError, EngineError) as exc:
        print(f"stabiliser sweep: {exc}", file=sys.stderr)
        return 1
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
