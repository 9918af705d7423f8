"""`make bench`: the benchmark matrix, its plots and benchmarks/results/SUMMARY.md.

    python -m benchmarks.matrix             # full matrix (about 10 minutes on 2 cores)
    python -m benchmarks.matrix --quick     # a smaller one, into benchmarks/results/quick/
    python -m benchmarks.matrix --quality   # also run `chromacast eval` for the quality figures

Cases: 1, 2, 4, 8 streams x 480p, 720p, 1080p, each played at 30 fps like a camera and
as fast as possible; engine batch sizes 1, 2, 4, 8 on 8 streams of 480p; the seed
approach on the 720p clip. One engine is opened for the whole run. Writes matrix.json
(machine, settings, every case), the plots and SUMMARY.md; the quality figures come from
quality.json (written by --quality, or left there by an earlier `chromacast eval --json`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import report
from benchmarks.case import BenchError, CaseSpec, run_case
from benchmarks.clips import CACHE, SIZES, make_clip
from engines.backend import EngineError, open_engine
from stream.logs import error_line, setup_logging


@dataclass(frozen=True)
class Plan:
    streams: tuple[int, ...]
    sizes: tuple[str, ...]
    seconds: float
    warmup_s: float
    batch_size: str
    batch_streams: int
    batches: tuple[int, ...]
    seed_seconds: float


FULL = Plan(streams=(1, 2, 4, 8), sizes=("480p", "720p", "1080p"), seconds=6.0, warmup_s=1.0,
            batch_size="480p", batch_streams=8, batches=(1, 2, 4, 8), seed_seconds=6.0)
QUICK = Plan(streams=(1, 2), sizes=("480p", "720p"), seconds=3.0, warmup_s=1.0,
             batch_size="480p", batch_streams=2, batches=(1, 2), seed_seconds=3.0)
SEED_SIZE = "720p"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description="Run the benchmark matrix.")
    p.add_argument("--quick", action="store_true", help="a smaller matrix with shorter cases")
    p.add_argument("--quality", action="store_true", help="run `chromacast eval` for the quality figures")
    p.add_argument("--seconds", type=float, help="measured seconds per case (default 6, quick 3)")
    p.add_argument("--fps", type=float, default=30.0, help="source rate of the real-time cases (default 30)")
    p.add_argument("--short-side", type=int, help="network input short side (default: the pipeline's)")
    p.add_argument("--no-seed", action="store_true", help="skip the seed approach")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, quick: .../quick)")
    return p


def cases_of(plan: Plan, fps: float, short_side: int | None) -> list[CaseSpec]:
    base = CaseSpec(fps=fps, seconds=plan.seconds, warmup_s=plan.warmup_s, short_side=short_side)
    out = [replace(base, streams=n, size=size, realtime=realtime, fps=fps if realtime else None)
           for size in plan.sizes for n in plan.streams for realtime in (True, False)]
    return out


def batch_cases_of(plan: Plan, short_side: int | None) -> list[CaseSpec]:
    base = CaseSpec(streams=plan.batch_streams, size=plan.batch_size, fps=None, realtime=False,
                    seconds=plan.seconds, warmup_s=plan.warmup_s, short_side=short_side)
    return [replace(base, batch=b) for b in plan.batches]


def quality_figures(out: Path, run_eval: bool) -> dict | None:
    """`chromacast eval`'s JSON: run it now (--quality), else any already in the results folder."""
    path = out / "quality.json"
    if run_eval:
        from engines.evaluate import main as eval_main

        print("quality: chromacast eval ...", flush=True)
        if eval_main(["--json", str(path)]) != 0:
            print("quality: chromacast eval failed; the summary says so", flush=True)
            return None
    for candidate in (path, report.RESULTS / "quality.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except ValueError:
                error_line("bench", f"{candidate} is not valid JSON; quality figures left out")
    return None


def run_matrix(plan: Plan, fps: float, short_side: int | None, with_seed: bool) -> dict:
    machine = report.machine_info()
    busy_cores = machine["loadavg"][0]
    if busy_cores > 0.5 * (machine["cores"] or 1):
        print(f"warning: the machine is busy (load average {busy_cores:.1f} on {machine['cores']} cores); "
              f"the figures will be lower than on a quiet machine", flush=True)
    for size in sorted(set(plan.sizes) | {plan.batch_size}):
        for rate in {fps, 30.0}:  # real-time cases play at `fps`; the others read the 30 fps clip
            make_clip(*SIZES[size], rate, folder=CACHE)  # written once, before any timing
    seed_error = None
    if with_seed:
        from benchmarks.seed import SeedError, seed_model

        try:
            seed_model()
        except SeedError as exc:
            seed_error, with_seed = str(exc), False
            print(f"warning: no seed comparison: {exc}", flush=True)
    specs = cases_of(plan, fps, short_side)
    batch_specs = batch_cases_of(plan, short_side)
    if with_seed:  # the seed rides on the 720p single stream, as fast as possible: the ratio's pair
        specs = [replace(s, vs_seed=True, seed_seconds=plan.seed_seconds)
                 if (s.size, s.streams, s.realtime) == (SEED_SIZE, 1, False) else s for s in specs]
    started = time.monotonic()
    engine = open_engine(None, "auto")
    matrix: dict = {"machine": machine, "quick": plan is QUICK,
                    "settings": {"seconds": plan.seconds, "warmup_s": plan.warmup_s, "fps": fps,
                                 "short_side": short_side, "engine": engine.name},
                    "cases": [], "batch_scaling": [], "failed": [], "seed": None, "seed_error": seed_error,
                    "stabiliser_off": None}
    # the headline stream as fast as possible once more, without the colour stabiliser: its cost
    off_specs = [replace(s, stabiliser=0.0, vs_seed=False) for s in specs
                 if (s.size, s.streams, s.realtime) == (SEED_SIZE, 1, False)]
    total = len(specs) + len(batch_specs) + len(off_specs)
    try:
        for i, spec in enumerate(specs + off_specs + batch_specs, 1):
            label = (f"{spec.size} x{spec.streams} {spec.mode}" + (f" batch {spec.batch}" if spec.batch else "")
                     + (" no stabiliser" if spec.stabiliser == 0 else ""))
            t0 = time.monotonic()
            try:
                result = run_case(spec, engine)
            except BenchError as exc:
                print(f"[{i}/{total}] {label}: failed: {exc}", flush=True)
                matrix["failed"].append({"case": label, "error": str(exc)})
                continue
            print(f"[{i}/{total}] {label}: {result['fps']['sustained']:.1f} fps, p99 "
                  f"{result['latency_ms']['p99'] or float('nan'):.0f} ms, dropped "
                  f"{result['frames']['window']['dropped']}, busiest {result['bottleneck']} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            if "seed" in result:
                matrix["seed"] = result["seed"]
            if spec.stabiliser == 0:
                matrix["stabiliser_off"] = result
            else:
                (matrix["batch_scaling"] if spec.batch else matrix["cases"]).append(result)
    finally:
        engine.close()
    matrix["duration_s"] = round(time.monotonic() - started, 1)
    return matrix


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(-1)
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    out = args.out or (report.RESULTS / "quick" if args.quick else report.RESULTS)
    try:
        matrix = run_matrix(plan, args.fps, args.short_side, not args.no_seed)
    except (EngineError, BenchError) as exc:
        error_line("bench", str(exc))
        return 2
    matrix["quality"] = quality_figures(out, args.quality)
    report.write_json(out / "matrix.json", matrix)
    plots = report.write_plots(matrix, out)
    summary = report.write_summary(matrix, out, plots)
    print(f"results: {out / 'matrix.json'}, {summary} ({matrix['duration_s']:.0f} s)")
    return 1 if matrix["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
