"""`chromacast build-engine`: a TensorRT FP16 engine from the exported ONNX, cached on disk.

The engine has one optimisation profile: batch from 1 to --max-batch (tuned for
--opt-batch) and the spatial sizes asked for. Engines are not portable between
GPUs or TensorRT versions, so the cached file is keyed by GPU model, compute
capability, TensorRT version, the ONNX file's hash and the profile; any change
gives a new key and a rebuild. A timing cache per GPU and TensorRT version makes
rebuilds fast.

Nothing here imports tensorrt or pycuda at module level: the cache key and the
profile maths work (and are tested) on machines without a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stream.logs import setup_logging
from engines.backend import DEFAULT_MODEL, EngineError, ModelInfo, tensorrt_unavailable_reason
from engines.colour import SIZE_MULTIPLE

log = logging.getLogger("chromacast.engine")

BUILD_RECIPE = 1  # bump when the build changes what an engine computes (flags, pinned layers)
DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024
WIDEST_ASPECT = 2.4  # cinema scope: the longest side a short-side profile must cover
SMALLEST_DEFAULT_SHORT_SIDE = 128  # the default profile also takes configs that trade detail for speed
INPUT_NAMES = ("L", "hint_ab", "hint_mask", "state")
OUTPUT_NAMES = ("ab", "next_state")


def _snap(v: float) -> int:
    return max(SIZE_MULTIPLE, int(round(v / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


@dataclass(frozen=True)
class ProfileSpec:
    """The engine's optimisation profile: batch range and network input (h, w) range."""

    max_batch: int
    opt_batch: int
    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    @classmethod
    def from_sizes(cls, sizes: list[str] | None, max_batch: int = DEFAULT_MAX_BATCH,
                   opt_batch: int | None = None, default_short_side: int = 224) -> "ProfileSpec":
        """Sizes are 'WxH' (one fixed network size) or a short side 'S' (every aspect up to
        2.4:1, landscape or portrait, tuned for 16:9); several widen the range, the first
        sets the tuning point. Default: the model's short side, down to 128."""
        if max_batch < 1:
            raise EngineError(f"max batch must be at least 1, got {max_batch}")
        if not sizes:
            sizes = [str(default_short_side), str(min(default_short_side, SMALLEST_DEFAULT_SHORT_SIDE))]
        ranges = [_size_range(s) for s in sizes]
        lo = (min(r[0][0] for r in ranges), min(r[0][1] for r in ranges))
        hi = (max(r[2][0] for r in ranges), max(r[2][1] for r in ranges))
        opt = min(max_batch, opt_batch or max_batch)
        return cls(max_batch, max(1, opt), lo, ranges[0][1], hi)

    def covers(self, batch: int, h: int, w: int) -> bool:
        return (1 <= batch <= self.max_batch and self.min_hw[0] <= h <= self.max_hw[0]
                and self.min_hw[1] <= w <= self.max_hw[1])

    def shapes(self, info: ModelInfo) -> dict[str, tuple[tuple[int, ...], ...]]:
        """min/opt/max shape of every network input, for IOptimizationProfile.set_shape."""
        points = ((1, self.min_hw), (self.opt_batch, self.opt_hw), (self.max_batch, self.max_hw))
        s, c = info.state_stride, info.state_channels
        return {
            "L": tuple((b, 1, h, w) for b, (h, w) in points),
            "hint_ab": tuple((b, 2, h, w) for b, (h, w) in points),
            "hint_mask": tuple((b, 1, h, w) for b, (h, w) in points),
            "state": tuple((b, c, h // s, w // s) for b, (h, w) in points),
        }

    def describe(self) -> str:
        (h0, w0), (h1, w1), (h2, w2) = self.min_hw, self.opt_hw, self.max_hw
        return (f"batch 1..{self.max_batch} (tuned for {self.opt_batch}), "
                f"network size {w0}x{h0}..{w2}x{h2} (tuned for {w1}x{h1})")


def _size_range(text: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(min, opt, max) network (h, w) for one --size value."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m:
        w, h = int(m.group(1)), int(m.group(2))
        if w % SIZE_MULTIPLE or h % SIZE_MULTIPLE or not w or not h:
            raise EngineError(f"size {text!r}: width and height must be positive multiples of {SIZE_MULTIPLE}")
        return (h, w), (h, w), (h, w)
    if not text.strip().isdigit() or int(text) < SIZE_MULTIPLE:
        raise EngineError(f"size {text!r}: expected WxH (e.g. 384x224) or a short side (e.g. 224)")
    short = _snap(int(text))
    longest = _snap(int(text) * WIDEST_ASPECT)
    return (short, short), (short, _snap(int(text) * 16 / 9)), (longest, longest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, gpu_name: str, compute_capability: tuple[int, int],
                     trt_version: str, profile: ProfileSpec, workspace_mb: int) -> str:
    """Key of a cached engine: changes whenever the GPU model, compute capability,
    TensorRT version, model file, profile or build recipe changes."""
    payload = {"onnx": onnx_sha256, "gpu": gpu_name, "sm": list(compute_capability), "trt": trt_version,
               "profile": asdict(profile), "workspace_mb": workspace_mb, "recipe": BUILD_RECIPE,
               "precision": "fp16"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def engine_file_name(model_stem: str, gpu_name: str, compute_capability: tuple[int, int],
                     trt_version: str, key: str) -> str:
    """A name a person can read (model, GPU, TensorRT) that still carries the full key."""
    major, minor = compute_capability
    return f"{_slug(model_stem)}-{_slug(gpu_name)}-sm{major}{minor}-trt{_slug(trt_version)}-{key}.engine"


def timing_cache_name(gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    major, minor = compute_capability
    return f"timing-{_slug(gpu_name)}-sm{major}{minor}-trt{_slug(trt_version)}.cache"


def default_cache_dir() -> Path:
    env = os.environ.get("CHROMACAST_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chromacast" / "engines"


def read_model_info(model: Path) -> ModelInfo:
    """The contract metadata of an exported model (ONNX Runtime reads it; it is installed anyway)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"cannot load model {model}: {str(exc).splitlines()[0]}") from None
    return ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map)


@dataclass(frozen=True)
class EngineArtifact:
    path: Path
    plan: bytes
    built: bool  # False when reused from the cache
    seconds: float


def build_or_load(model: Path, profile: ProfileSpec, info: ModelInfo, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                  cache_dir: Path | None = None, rebuild: bool = False) -> EngineArtifact:
    """The serialized engine for `model` on the GPU of the current CUDA context:
    from the cache when its key matches, else built (and cached). The caller has
    a pycuda context pushed in this thread."""
    import pycuda.driver as cuda
    import tensorrt as trt

    device = cuda.Context.get_device()
    gpu, sm, version = device.name(), tuple(device.compute_capability()), trt.__version__
    key = engine_cache_key(file_sha256(model), gpu, sm, version, profile, workspace_mb)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / engine_file_name(model.stem, gpu, sm, version, key)
    t0 = time.perf_counter()
    if path.is_file() and not rebuild:
        return EngineArtifact(path, path.read_bytes(), False, time.perf_counter() - t0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building TensorRT FP16 engine for %s on %s (%s); this takes minutes once per GPU and model",
             model.name, gpu, profile.describe())
    plan = build_serialized_engine(model, profile, info, workspace_mb,
                                   cache_dir / timing_cache_name(gpu, sm, version))
    _atomic_write(path, plan)
    meta = {"model": str(model), "gpu": gpu, "compute_capability": list(sm), "tensorrt": version,
            "profile": asdict(profile), "workspace_mb": workspace_mb, "key": key, "recipe": BUILD_RECIPE}
    _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return EngineArtifact(path, plan, True, time.perf_counter() - t0)


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers (another process loading the cache) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_serialized_engine(model: Path, profile: ProfileSpec, info: ModelInfo, workspace_mb: int,
                            timing_cache: Path) -> bytes:
    """Parse the ONNX, build an FP16 engine with the FP32 output tail, return the plan bytes."""
    import tensorrt as trt

    if not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineError(f"TensorRT {trt.__version__} has no FP16 builder flag (removed in TensorRT 11); "
                          "install tensorrt 10 (pip install 'tensorrt>=10,<11')")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model)):
        first = str(parser.get_error(0)).splitlines()[0] if parser.num_errors else "unknown error"
        raise EngineError(f"TensorRT cannot parse {model.name}: {first}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(INPUT_NAMES):
        raise EngineError(f"{model.name} inputs are {sorted(names)}, expected {list(INPUT_NAMES)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    pinned = pin_output_tail_fp32(network, "ab")
    if pinned:
        # FP16 overflows in softmax-like heads: the annealed mean must really run in FP32
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    log.info("TensorRT: %d output-tail layers kept in FP32 (%s)", len(pinned), ", ".join(pinned))

    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(info).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if cache is None:  # an unreadable (damaged) cache file: start a fresh one rather than fail
        log.warning("timing cache %s unreadable; starting a new one", timing_cache)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT engine build failed (see TensorRT's messages above)")
    # the config's cache, which the build added to (set_timing_cache takes `cache` as const)
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


MAX_TAIL_LAYERS = 16  # the annealed mean is a handful of layers; never pin the whole network


def pin_output_tail_fp32(network, output_name: str) -> list[str]:
    """Mark the layers between the last convolution and `output_name` (scale by 1/T,
    softmax over the bins, weighted sum with the bin centres) to compute and output
    in FP32. Returns their names."""
    import tensorrt as trt

    producer = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    outputs = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    if output_name not in outputs:
        return []
    pinned, queue, seen = [], [outputs[output_name].name], set()
    while queue and len(pinned) < MAX_TAIL_LAYERS:
        layer = producer.get(queue.pop(0))
        if layer is None or layer.name in seen:
            continue
        seen.add(layer.name)
        if layer.type in (trt.LayerType.CONVOLUTION, trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue  # the head convolution stays FP16; constants and shapes carry no arithmetic
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:
                queue.append(tensor.name)
    return pinned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromacast build-engine",
                                     description="Build (or find in the cache) a TensorRT FP16 engine for an NVIDIA GPU.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX model (default: shipped model)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most frames per batch, i.e. streams served together (default: %(default)s)")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch size to tune for (default: max batch)")
    parser.add_argument("--size", action="append", default=None, metavar="WxH|S",
                        help="network input size: WxH, or a short side S for any aspect; repeatable "
                             "(default: the model's short side, down to 128)")
    parser.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                        help="builder workspace limit in MiB (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"engine cache folder (default: {default_cache_dir()})")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default: 0)")
    parser.add_argument("--rebuild", action="store_true", help="build even when a cached engine matches")
    args = parser.parse_args(argv)
    setup_logging()
    prog = "chromacast build-engine"
    if not args.model.is_file():
        print(f"{prog}: model file not found: {args.model}", file=sys.stderr)
        return 2
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        print(f"{prog}: TensorRT engine cannot be built here: {reason} "
              "(needs an NVIDIA GPU, TensorRT 10 and pycuda: pip install 'chromacast[gpu]')", file=sys.stderr)
        return 2
    try:
        info = read_model_info(args.model)
        profile = ProfileSpec.from_sizes(args.size, args.max_batch, args.opt_batch, info.default_short_side)
        artifact = _build_on_device(args.model, profile, info, args.workspace, args.cache_dir, args.device,
                                    args.rebuild)
    except EngineError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    verb = f"built in {artifact.seconds:.0f} s" if artifact.built else "up to date (cached)"
    print(f"{artifact.path} {verb}: {profile.describe()}")
    return 0


def _build_on_device(model: Path, profile: ProfileSpec, info: ModelInfo, workspace_mb: int,
                     cache_dir: Path | None, device_index: int, rebuild: bool) -> EngineArtifact:
    import pycuda.driver as cuda

    cuda.init()
    if not 0 <= device_index < cuda.Device.count():
        raise EngineError(f"no CUDA device {device_index} ({cuda.Device.count()} found)")
    ctx = cuda.Device(device_index).retain_primary_context()
    ctx.push()
    try:
        return build_or_load(model, profile, info, workspace_mb, cache_dir, rebuild)
    except (EngineError, KeyboardInterrupt):
        raise
    except Exception as exc:  # CUDA, TensorRT or file system: one line for the user
        text = str(exc).strip()
        raise EngineError(f"engine build failed: {text.splitlines()[0] if text else type(exc).__name__}") from exc
    finally:
        cuda.Context.pop()
        ctx.detach()
