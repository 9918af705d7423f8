"""GPU benchmark: the TensorRT FP16 network by batch size, and the colour kernels around it.

    .venv/bin/python -m benchmarks.gpu_bench [--batches 1,2,4,8] [--size 384x224] [--frame 1920x1080]

Measures, on the first NVIDIA GPU:
  * network: device time of one batch (CUDA events around execute_async_v3 with the
    state gather/scatter), median and p90, and frames per second, per batch size;
  * colorize: wall-clock latency of Engine.colorize for a batch of full-resolution
    8-bit L frames (upload, resize, network, merge, download), per batch size;
  * kernels: device time of l8_to_network and merge_l8_ab_bgr for one frame, next to
    the same work on the CPU with engines.colour.
Writes benchmarks/results/gpu_bench-<gpu>.json naming the device. Without TensorRT,
pycuda or a GPU it prints one line saying why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from engines import colour
from engines.backend import DEFAULT_MODEL, tensorrt_unavailable_reason

RESULTS = Path(__file__).parent / "results"


def _stats(ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4)}


def _device_times(engine, fn, iters: int, warmup: int) -> list[float]:
    """Device milliseconds of fn() on the engine's stream, one CUDA event pair per run."""
    cuda = engine._cuda
    times = []
    with engine._current():  # the engine's context, as every engine call does
        for i in range(warmup + iters):
            start, end = cuda.Event(), cuda.Event()
            start.record(engine._stream)
            fn()
            end.record(engine._stream)
            end.synchronize()
            if i >= warmup:
                times.append(end.time_since(start))
    return times


def bench_network(engine, batches: list[int], size: tuple[int, int], iters: int, warmup: int) -> list[dict]:
    w, h = size
    rows = []
    for b in batches:
        states = [engine.new_state(size) for _ in range(b)]
        engine.infer(np.zeros((b, 1, h, w), np.float32), states)  # shapes set, buffers allocated
        zeros = (engine._buffers["zero_ab"].ptr(), engine._buffers["zero_mask"].ptr())
        ms = _device_times(engine, lambda: engine._execute(states, h, w, zeros), iters, warmup)
        rows.append({"batch": b, **_stats(ms), "frames_per_s": round(b * 1000 / float(np.median(ms)), 1)})
    return rows


def bench_colorize(engine, batches: list[int], frame: tuple[int, int], iters: int, warmup: int) -> list[dict]:
    fw, fh = frame
    size = engine.network_size(fw, fh)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        frames = [rng.integers(0, 256, (fh, fw), dtype=np.uint8) for _ in range(b)]
        states = [engine.new_state(size) for _ in range(b)]
        ms = []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            engine.colorize(frames, states)
            if i >= warmup:
                ms.append((time.perf_counter() - t0) * 1000)
        rows.append({"batch": b, "network_size": f"{size[0]}x{size[1]}", **_stats(ms),
                     "frames_per_s": round(b * 1000 / float(np.median(ms)), 1)})
    return rows


def bench_kernels(engine, frame: tuple[int, int], iters: int, warmup: int) -> dict:
    fw, fh = frame
    w, h = engine.network_size(fw, fh)
    a = engine.info.ab_stride
    rng = np.random.default_rng(1)
    l8 = rng.integers(0, 256, (fh, fw), dtype=np.uint8)
    ab = rng.normal(0, 30, (2, h // a, w // a)).astype(np.float32)
    state = engine.new_state((w, h))
    engine.colorize([l8], [state])  # allocates and uploads frames_in; ab buffer holds a prediction
    buf, k, stream = engine._buffers, engine._kernels, engine._stream
    if k is None:
        return {"error": "GPU colour kernels unavailable (nvcc missing?)"}
    pre = _device_times(engine, lambda: k.l8_to_network(buf["frames_in"].ptr(), fw, fh, buf["L"].ptr(), w, h,
                                                          stream), iters, warmup)
    post = _device_times(engine, lambda: k.merge_l8_ab(buf["frames_in"].ptr(), fw, fh, buf["ab"].ptr(),
                                                         w // a, h // a, buf["frames_out"].ptr(), stream),
                         iters, warmup)
    cpu_pre, cpu_post = [], []
    for _ in range(max(5, iters // 5)):
        t0 = time.perf_counter()
        colour.l8_to_network(l8, (w, h))
        t1 = time.perf_counter()
        colour.merge_l8_ab(l8, ab.copy())
        t2 = time.perf_counter()
        cpu_pre.append((t1 - t0) * 1000)
        cpu_post.append((t2 - t1) * 1000)
    return {"frame": f"{fw}x{fh}", "network_size": f"{w}x{h}",
            "gpu_l8_to_network": _stats(pre), "gpu_merge_l8_ab_bgr": _stats(post),
            "cpu_l8_to_network": _stats(cpu_pre), "cpu_merge_l8_ab": _stats(cpu_post)}


def _pair(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes")
    p.add_argument("--size", type=_pair, default=(384, 224), help="network input WxH")
    p.add_argument("--frame", type=_pair, default=(1920, 1080), help="full-resolution frame WxH")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        print(f"gpu_bench: skipped: {reason} (needs an NVIDIA GPU, TensorRT 10 and pycuda)")
        return 0
    from engines.tensorrt_backend import TensorRTEngine

    batches = sorted({int(b) for b in args.batches.split(",")})
    w, h = args.size
    engine = TensorRTEngine(args.model, max_batch=max(batches), sizes=[f"{w}x{h}"], cache_dir=args.cache_dir)
    try:
        import pycuda.driver as cuda
        import tensorrt as trt

        with engine._current():
            device = cuda.Context.get_device()
            gpu, sm = device.name(), device.compute_capability()
        frame_size = engine.network_size(*args.frame)
        result = {
            "device": gpu, "compute_capability": f"{sm[0]}.{sm[1]}", "tensorrt": trt.__version__,
            "host": platform.processor() or platform.machine(), "model": args.model.name,
            "engine": engine.engine_path.name, "precision": "fp16 (annealed mean fp32)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "network": bench_network(engine, batches, (w, h), args.iters, args.warmup),
            "colorize": (bench_colorize(engine, batches, args.frame, args.iters, args.warmup)
                         if frame_size == (w, h) else f"frame {args.frame} maps to {frame_size}, not {w}x{h}"),
            "kernels": bench_kernels(engine, args.frame, args.iters, args.warmup) if frame_size == (w, h) else None,
        }
    finally:
        engine.close()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = args.out or RESULTS / f"gpu_bench-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["network"]:
        print(f"network batch {row['batch']:>2}: {row['median_ms']:.3f} ms, {row['frames_per_s']:.0f} frames/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
