"""The NVIDIA GPU path: TensorRT engine, its cache, and the GPU colour kernels.

Without TensorRT, pycuda and a GPU, the GPU tests skip with the reason, and what
can be checked here is: the fallback to ONNX Runtime, the clear errors, the
engine cache key and profile maths, and the CUDA kernel source itself (compiled
for the CPU with a small thread-loop harness, and by nvcc when it is installed),
against engines.colour.
"""
from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import colour
from engines.backend import DEFAULT_MODEL, EngineError, open_engine, tensorrt_unavailable_reason
from engines.gpu_colour import KERNEL_SOURCE
from engines.tensorrt_build import ProfileSpec, engine_cache_key, engine_file_name, timing_cache_name

ROOT = Path(__file__).resolve().parents[1]
REASON = tensorrt_unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT 10, pycuda and an NVIDIA GPU ({REASON})")

# FP16 engine vs FP32 ONNX Runtime, ab in Lab units, per frame over 30 frames with state carried.
# (Emulating FP16 on the CPU for this network gives about 0.03 mean and 0.3 max.)
PARITY_MEAN, PARITY_P999, PARITY_MAX = 0.5, 3.0, 8.0
# GPU colour kernels vs engines.colour (OpenCV): network input in 8-bit levels, BGR in levels
RESIZE_MAX_LEVELS, MERGE_MAX_LEVELS = 1, 3


# ---- runs everywhere ---------------------------------------------------------------------------

def test_modules_import_without_tensorrt_or_pycuda():
    code = ("import sys, engines.tensorrt_backend, engines.tensorrt_build, engines.gpu_colour; "
            "print('tensorrt' in sys.modules, 'pycuda' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present: auto picks TensorRT")
def test_auto_falls_back_to_onnxruntime_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="chromacast.engine"):
        engine = open_engine(kind="auto", threads=1)
    assert engine.name == "onnxruntime"
    lines = [r.getMessage() for r in caplog.records if r.name == "chromacast.engine"]
    assert len(lines) == 1 and "onnxruntime" in lines[0] and REASON in lines[0]


@pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present")
def test_tensorrt_kind_without_tensorrt_is_one_clear_error():
    with pytest.raises(EngineError) as err:
        open_engine(kind="tensorrt")
    assert "\n" not in str(err.value) and REASON in str(err.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", "build-engine", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present")
def test_build_engine_without_tensorrt_exits_with_one_line():
    out = _cli("--max-batch", "4")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
    assert REASON in out.stderr and "chromacast[gpu]" in out.stderr


def test_build_engine_missing_model_is_one_line(tmp_path):
    out = _cli("--model", str(tmp_path / "missing.onnx"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"chromacast build-engine: model file not found: {tmp_path / 'missing.onnx'}"


def test_cache_key_changes_with_every_input():
    profile = ProfileSpec.from_sizes(["224"], max_batch=8)
    base = dict(onnx_sha256="ab" * 32, gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                trt_version="10.13.3.9", profile=profile, workspace_mb=1024)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**dict(base))  # deterministic
    changes = {"onnx_sha256": "cd" * 32, "gpu_name": "NVIDIA L4", "compute_capability": (8, 9),
               "trt_version": "10.14.1.48", "profile": ProfileSpec.from_sizes(["224"], max_batch=16),
               "workspace_mb": 2048}
    keys = {name: engine_cache_key(**{**base, name: value}) for name, value in changes.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(changes)
    name = engine_file_name("chromacast-default", base["gpu_name"], (9, 0), base["trt_version"], key)
    assert name == f"chromacast-default-nvidia-h100-80gb-hbm3-sm90-trt10.13.3.9-{key}.engine"
    assert "/" not in timing_cache_name("A/B C", (8, 6), "10.0") and "sm86" in timing_cache_name("x", (8, 6), "10")


def test_profile_covers_every_aspect_for_a_short_side():
    p = ProfileSpec.from_sizes(["224"], max_batch=8, opt_batch=4)
    assert (p.min_hw, p.opt_hw, p.max_hw, p.opt_batch) == ((224, 224), (224, 384), (544, 544), 4)
    for frame in [(1920, 1080), (640, 480), (1080, 1920), (2560, 1080), (224, 224)]:
        w, h = colour.network_size(*frame, 224)
        assert p.covers(8, h, w), frame
    assert not p.covers(9, 224, 384) and not p.covers(1, 192, 384)
    default = ProfileSpec.from_sizes(None, default_short_side=224)  # also takes lighter configs (short side 160)
    assert (default.min_hw, default.opt_hw, default.max_hw) == ((128, 128), (224, 384), (544, 544))
    assert default.covers(8, *colour.network_size(1920, 1080, 160)[::-1])
    fixed = ProfileSpec.from_sizes(["384x224", "256"], max_batch=2)
    assert fixed.opt_hw == (224, 384) and fixed.min_hw == (224, 256) and fixed.max_hw == (608, 608)
    shapes = fixed.shapes(type("Info", (), {"state_stride": 16, "state_channels": 32})())
    assert shapes["state"] == ((1, 32, 14, 16), (2, 32, 14, 24), (2, 32, 38, 38))
    assert shapes["hint_ab"][2] == (2, 2, 608, 608)
    for bad in ["380x224", "wide", "16", "0x0"]:
        with pytest.raises(EngineError):
            ProfileSpec.from_sizes([bad])
    with pytest.raises(EngineError):
        ProfileSpec.from_sizes(None, max_batch=0)


# ---- the kernel source, compiled for the CPU ----------------------------------------------------

HARNESS = r"""
#include <math.h>
#include <algorithm>
using std::min; using std::max;
struct dim3_t { unsigned x, y, z; };
static dim3_t blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
extern "C" {
%s
}
template <typename F> static void launch(int w, int h, F body) {
    blockDim = {32u, 8u, 1u};
    for (unsigned by = 0; by < (h + 7u) / 8u; ++by) for (unsigned bx = 0; bx < (w + 31u) / 32u; ++bx)
        for (unsigned ty = 0; ty < 8; ++ty) for (unsigned tx = 0; tx < 32; ++tx) {
            blockIdx = {bx, by, 0}; threadIdx = {tx, ty, 0}; body(); }
}
extern "C" void run_l8_to_network(const unsigned char *s, int sw, int sh, float *d, int dw, int dh) {
    launch(dw, dh, [&] { l8_to_network(s, sw, sh, d, dw, dh); });
}
extern "C" void run_merge(const unsigned char *l, int w, int h, const float *ab, int aw, int ah, unsigned char *o) {
    launch(w, h, [&] { merge_l8_ab_bgr(l, w, h, ab, aw, ah, o); });
}
"""


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    """The CUDA kernels, one thread at a time on the CPU: same source, same arithmetic (no FMA)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to run the kernel source on the CPU")
    d = tmp_path_factory.mktemp("kernels")
    (d / "k.cpp").write_text(HARNESS % KERNEL_SOURCE)
    out = subprocess.run([cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-o",
                          str(d / "k.so"), str(d / "k.cpp")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lib = ctypes.CDLL(str(d / "k.so"))
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731

    def to_network(l8, size):
        w, h = size
        out = np.empty((h, w), np.float32)
        lib.run_l8_to_network(ptr(l8), l8.shape[1], l8.shape[0], ptr(out), w, h)
        return out

    def merge(l8, ab):
        h, w = l8.shape
        ab = np.ascontiguousarray(ab, np.float32)
        out = np.empty((h, w, 3), np.uint8)
        lib.run_merge(ptr(l8), w, h, ptr(ab), ab.shape[2], ab.shape[1], ptr(out))
        return out

    return to_network, merge


def _frame(rng, h, w, smooth=0.0):
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), smooth) if smooth else img


def _smooth_ab(rng, h, w):
    ab = rng.normal(0, 45, (h, w, 2)).astype(np.float32)
    return np.ascontiguousarray(cv2.GaussianBlur(ab, (0, 0), 1.5).transpose(2, 0, 1))


@pytest.mark.parametrize("frame,size", [((1920, 1080), (384, 224)), ((640, 480), (288, 224)),
                                        ((448, 448), (224, 224)), ((672, 448), (224, 224)),
                                        ((100, 80), (128, 96)), ((300, 200), (224, 256)),
                                        ((224, 224), (224, 224)), ((1279, 719), (384, 224))])
def test_kernel_resize_matches_cpu_path(cpu_kernels, frame, size):
    to_network, _ = cpu_kernels
    rng = np.random.default_rng(sum(frame))
    for smooth in (0.0, 2.0):
        l8 = _frame(rng, frame[1], frame[0], smooth)
        levels = np.abs(to_network(l8, size) - colour.l8_to_network(l8, size)) * 127.5
        assert levels.max() <= RESIZE_MAX_LEVELS + 1e-3
        assert (levels > 1e-3).mean() <= 0.01  # OpenCV's own rounding reproduced, not just approximated


@pytest.mark.parametrize("frame,ab_size", [((1920, 1080), (96, 56)), ((640, 480), (72, 56)), ((333, 217), (57, 41))])
def test_kernel_merge_matches_cpu_path(cpu_kernels, frame, ab_size):
    _, merge = cpu_kernels
    rng = np.random.default_rng(frame[0])
    l8 = _frame(rng, frame[1], frame[0])
    ab = _smooth_ab(rng, ab_size[1], ab_size[0])
    diff = np.abs(merge(l8, ab).astype(np.int16) - colour.merge_l8_ab(l8, ab.copy()))
    assert diff.max() <= MERGE_MAX_LEVELS and diff.mean() < 0.1


def test_kernel_lab_to_bgr_over_the_8bit_lab_cube(cpu_kernels):
    _, merge = cpu_kernels
    v = np.arange(0, 256, 3)
    L, a, b = np.meshgrid(v, v, v, indexing="ij")
    l8 = L.reshape(len(v), -1).astype(np.uint8)
    ab = np.stack([a.reshape(l8.shape), b.reshape(l8.shape)]).astype(np.float32) - 128  # same size: no resampling
    lab8 = np.dstack([l8, (ab[0] + 128).astype(np.uint8), (ab[1] + 128).astype(np.uint8)])
    diff = np.abs(merge(l8, ab).astype(np.int16) - cv2.cvtColor(lab8, cv2.COLOR_Lab2BGR))
    assert diff.max() <= MERGE_MAX_LEVELS and diff.mean() < 0.05


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_kernel_source_compiles_with_nvcc(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text('extern "C" {\n' + KERNEL_SOURCE + "\n}\n")  # as pycuda's SourceModule wraps it
    out = subprocess.run(["nvcc", "--ptx", "--fmad=false", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert ".entry l8_to_network(" in ptx and ".entry merge_l8_ab_bgr(" in ptx


# ---- GPU machines only --------------------------------------------------------------------------

def _moving_frames(rng, n, h, w):
    """Smooth frames panning across a larger texture, as network input in [-1, 1]."""
    big = cv2.GaussianBlur(rng.random((h + n, w + n)).astype(np.float32), (0, 0), 4)
    big = (big - big.min()) / (big.max() - big.min())
    return [big[t:t + h, t:t + w] * 2 - 1 for t in range(n)]


@pytest.fixture(scope="module")
def trt_engine(tmp_path_factory):
    from engines.tensorrt_backend import TensorRTEngine

    engine = TensorRTEngine(DEFAULT_MODEL, max_batch=2, sizes=["384x224"],
                            cache_dir=tmp_path_factory.mktemp("engines"))
    yield engine
    engine.close()


@needs_gpu
@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime_over_30_frames(trt_engine):
    cpu = open_engine(kind="onnxruntime")
    rng = np.random.default_rng(7)
    h, w = 224, 384
    streams = [_moving_frames(rng, 30, h, w), _moving_frames(rng, 30, h, w)]
    gpu_states = [trt_engine.new_state((w, h)) for _ in streams]
    cpu_states = [cpu.new_state((w, h)) for _ in streams]
    for t in range(30):
        L = np.stack([s[t] for s in streams])[:, None].astype(np.float32)
        ab_gpu = trt_engine.infer(L, gpu_states)
        ab_cpu = cpu.infer(L, cpu_states)
        assert not np.isnan(ab_gpu).any()
        err = np.abs(ab_gpu - ab_cpu)
        assert err.mean() <= PARITY_MEAN and np.quantile(err, 0.999) <= PARITY_P999 and err.max() <= PARITY_MAX, t


@needs_gpu
@pytest.mark.gpu
def test_cached_engine_is_reused(trt_engine):
    import pycuda.driver as cuda

    from engines.tensorrt_build import build_or_load

    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        again = build_or_load(DEFAULT_MODEL, trt_engine.profile, trt_engine.info,
                              cache_dir=trt_engine.engine_path.parent)
    finally:
        cuda.Context.pop()
        ctx.detach()
    assert not again.built and again.path == trt_engine.engine_path
    assert again.path.with_suffix(".json").is_file() and len(list(again.path.parent.glob("timing-*.cache"))) == 1


@needs_gpu
@pytest.mark.gpu
def test_gpu_colorize_matches_cpu_colorize(trt_engine):
    cpu = open_engine(kind="onnxruntime")
    rng = np.random.default_rng(3)
    frames = [_frame(rng, 1080, 1920, 3.0), _frame(rng, 720, 1280, 3.0)]  # both map to 384x224
    size = (384, 224)
    gpu_states, cpu_states = [trt_engine.new_state(size) for _ in frames], [cpu.new_state(size) for _ in frames]
    for _ in range(3):
        out_gpu = trt_engine.colorize(frames, gpu_states)
        out_cpu = cpu.colorize(frames, cpu_states)
        for g, c in zip(out_gpu, out_cpu):
            assert g.shape == c.shape and g.dtype == np.uint8
            assert np.abs(g.astype(np.int16) - c).mean() < 2.0  # network FP16 + kernel rounding
