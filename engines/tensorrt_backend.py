"""TensorRT FP16 engine on an NVIDIA GPU, with the colour maths on the GPU too.

Per batch, only 8-bit planes cross the PCIe bus: the full-resolution uint8 L
planes go up in one copy, the uint8 BGR frames come back in one copy. Resizing,
normalisation, the network, ab upsampling, the merge with the full-resolution L
and Lab -> BGR all run on the device (engines/gpu_colour.py), asynchronously on
one CUDA stream. Each stream's recurrent state lives in its own device
allocation and moves to and from the batch with device-to-device copies.

Threading: CUDA contexts are per thread (TensorRT issue #2357). The engine retains
the device's primary context and pushes it around every call, so each CUDA call
runs with the context current in the calling thread and pops it afterwards. One
engine object is driven by one thread at a time (the pipeline's engine thread);
it has no lock of its own.
"""
from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engines.backend import Engine, EngineError, StreamState
from engines.hints import Hint, rasterise
from engines.tensorrt_build import (DEFAULT_MAX_BATCH, DEFAULT_WORKSPACE_MB, INPUT_NAMES, OUTPUT_NAMES,
                                    ProfileSpec, build_or_load, read_model_info)

log = logging.getLogger("chromacast.engine")
F32 = 4  # bytes per float32


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DeviceState(StreamState):
    """One stream's recurrent state (1 x C x h/16 x w/16 float32) in device memory."""

    def __init__(self, size: tuple[int, int], alloc, nbytes: int, release: Callable[[object], None]):
        super().__init__(size)
        self.alloc = alloc  # pycuda DeviceAllocation, freed with this object through `release`
        self.nbytes = nbytes
        # pycuda frees an allocation only where its context is current or in the thread that
        # retained the context, and silently leaks it elsewhere (the engine thread drops states)
        weakref.finalize(self, release, alloc)


class _Buffer:
    """Device memory, with a pinned host mirror when asked, that only ever grows."""

    def __init__(self, cuda, host_dtype=None, zeroed: bool = False):
        self._cuda, self._dtype, self._zeroed = cuda, host_dtype, zeroed
        self.device = self.host = None
        self.capacity = 0

    def reserve(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        self.free()
        self.device = self._cuda.mem_alloc(nbytes)
        if self._zeroed:
            self._cuda.memset_d8(self.device, 0, nbytes)
        if self._dtype is not None:
            self.host = self._cuda.pagelocked_empty(nbytes // np.dtype(self._dtype).itemsize, self._dtype)
        self.capacity = nbytes

    def ptr(self, offset: int = 0) -> int:
        return int(self.device) + offset

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
        self.device = self.host = None
        self.capacity = 0


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, model: Path | str, max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int | None = None,
                 sizes: list[str] | None = None, short_side: int | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, cache_dir: Path | str | None = None,
                 device: int = 0, rebuild: bool = False):
        """`sizes`: network sizes the engine must take ('WxH' or a short side 'S');
        default: `short_side` (the pipeline's), else the model's short side down to 128."""
        import pycuda.driver as cuda
        import tensorrt as trt

        self._cuda, self._trt = cuda, trt
        model = Path(model)
        self.info = read_model_info(model)
        if sizes is None and short_side:
            sizes = [str(short_side)]
        try:
            self.profile = ProfileSpec.from_sizes(sizes, max_batch, opt_batch, self.info.default_short_side)
        except EngineError as exc:
            raise EngineError(f"engine options: {exc}") from None
        cuda.init()
        if not 0 <= device < cuda.Device.count():
            raise EngineError(f"no CUDA device {device} ({cuda.Device.count()} found)")
        self._device_name = cuda.Device(device).name()
        self._checked_shapes: set[tuple[int, int, int]] = set()
        self._ctx = cuda.Device(device).retain_primary_context()
        try:
            with self._current():
                self._stream = cuda.Stream()
                self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
                self._engine = self._load(model, workspace_mb, cache_dir, rebuild)
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
                self._kernels = self._compile_kernels()
                # with the colour kernels, colorize() merges on the GPU and must not be split
                self.merges_on_device = self._kernels is not None
        except BaseException as exc:
            self._ctx.detach()
            self._ctx = None
            if isinstance(exc, Exception) and not isinstance(exc, EngineError):
                # a CUDA or TensorRT failure: one line for the user, the cause stays chained
                raise EngineError(f"TensorRT engine could not start: {_first_line(exc)}") from exc
            raise
        host_mirrors = {"L": np.float32, "state_in": None, "state_out": None, "ab": np.float32,
                        "hint_ab": np.float32, "hint_mask": np.float32,
                        "frames_in": np.uint8, "frames_out": np.uint8}
        self._buffers = {name: _Buffer(cuda, dtype) for name, dtype in host_mirrors.items()}
        self._buffers["zero_ab"] = _Buffer(cuda, zeroed=True)
        self._buffers["zero_mask"] = _Buffer(cuda, zeroed=True)

    # ---- setup -------------------------------------------------------------------------------

    @contextmanager
    def _current(self):
        """The engine's CUDA context, current in the calling thread for the duration."""
        if self._ctx is None:
            raise EngineError("TensorRT engine is closed")
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self, model: Path, workspace_mb: int, cache_dir, rebuild: bool):
        artifact = build_or_load(model, self.profile, self.info, workspace_mb,
                                 Path(cache_dir) if cache_dir else None, rebuild)
        engine = self._deserialize(artifact.plan)
        if engine is None and not artifact.built:
            log.info("cached TensorRT engine %s does not load here; rebuilding", artifact.path.name)
            artifact = build_or_load(model, self.profile, self.info, workspace_mb,
                                     Path(cache_dir) if cache_dir else None, rebuild=True)
            engine = self._deserialize(artifact.plan)
        if engine is None:
            raise EngineError(f"TensorRT cannot load engine {artifact.path}")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != set(INPUT_NAMES + OUTPUT_NAMES):
            raise EngineError(f"engine tensors {sorted(names)} do not follow the chromacast contract")
        self.engine_path = artifact.path
        log.info("tensorrt engine on %s: %s (%s)", self._device_name, artifact.path.name,
                 f"built in {artifact.seconds:.0f} s" if artifact.built else "from cache")
        return engine

    def _deserialize(self, plan: bytes):
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception:  # a damaged or foreign plan: TensorRT has logged why
            return None

    def _compile_kernels(self):
        from engines.gpu_colour import ColourKernels

        try:
            return ColourKernels()
        except Exception as exc:  # nvcc missing or failing: the network still runs on the GPU
            log.warning("GPU colour kernels unavailable (%s); colour maths stays on the CPU", _first_line(exc))
            return None

    # ---- states -----------------------------------------------------------------------------

    def _state_bytes(self, size: tuple[int, int]) -> int:
        return int(np.prod(self._state_shape(size))) * F32

    def new_state(self, size: tuple[int, int]) -> DeviceState:
        w, h = size
        if not self.profile.covers(1, h, w):
            raise EngineError(f"network size {w}x{h} is outside this engine's profile ({self.profile.describe()}); "
                              f"build one with: chromacast build-engine --size {w}x{h}")
        nbytes = self._state_bytes(size)
        with self._current():
            alloc = self._cuda.mem_alloc(nbytes)
            self._cuda.memset_d32_async(alloc, 0, nbytes // F32, self._stream)
        return DeviceState(tuple(size), alloc, nbytes, self._free_state)

    def _free_state(self, alloc) -> None:
        """Free a dropped state's device memory with the engine's context current, in any thread."""
        if self._ctx is None:
            return  # closed: releasing the context took its memory with it
        with self._current():
            alloc.free()

    def reset_state(self, state: StreamState) -> None:
        with self._current():
            self._cuda.memset_d32_async(state.alloc, 0, state.nbytes // F32, self._stream)

    def _state_shape(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        w, h = size
        s = self.info.state_stride
        return 1, self.info.state_channels, h // s, w // s

    def state_to_numpy(self, state: StreamState) -> np.ndarray:
        self._check_states([state])
        out = np.empty(self._state_shape(state.size), np.float32)
        with self._current():
            self._stream.synchronize()  # the last batch's scatter may still be writing it
            self._cuda.memcpy_dtoh(out, state.alloc)
        return out

    def state_from_numpy(self, array: np.ndarray, size: tuple[int, int]) -> DeviceState:
        if array.shape != self._state_shape(size):
            raise EngineError(f"saved state has shape {array.shape}, expected {self._state_shape(size)} "
                              f"for input size {size}")
        state = self.new_state(size)
        with self._current():
            self._stream.synchronize()
            self._cuda.memcpy_htod(state.alloc, np.ascontiguousarray(array, np.float32))
        return state

    def _check_states(self, states: Sequence[StreamState]) -> tuple[int, int]:
        size = states[0].size
        for s in states:
            if not isinstance(s, DeviceState) or s.size != size:
                raise EngineError("states must come from this engine's new_state and share one network size")
        return size

    # ---- one network run ---------------------------------------------------------------------

    def _reserve(self, h: int, w: int) -> None:
        """Device buffers for a full batch at network size (h, w); allocations only grow."""
        n, b = h * w * F32, self.profile.max_batch
        a = self.info.ab_stride
        sizes = {"L": b * n, "zero_ab": 2 * b * n, "zero_mask": b * n,
                 "state_in": b * self._state_bytes((w, h)), "state_out": b * self._state_bytes((w, h)),
                 "ab": b * 2 * (h // a) * (w // a) * F32}
        for name, nbytes in sizes.items():
            self._buffers[name].reserve(nbytes)

    def _upload_hints(self, hints, b: int, h: int, w: int, hint_ab=None, hint_mask=None) -> tuple[int, int]:
        """Device addresses of hint_ab and hint_mask for this batch (the zero buffers when none)."""
        buf = self._buffers
        if hint_ab is None and not (hints and any(hints)):
            return buf["zero_ab"].ptr(), buf["zero_mask"].ptr()
        buf["hint_ab"].reserve(2 * self.profile.max_batch * h * w * F32)
        buf["hint_mask"].reserve(self.profile.max_batch * h * w * F32)
        ab = buf["hint_ab"].host[:b * 2 * h * w].reshape(b, 2, h, w)
        mask = buf["hint_mask"].host[:b * h * w].reshape(b, 1, h, w)
        if hint_ab is not None:
            ab[:], mask[:] = hint_ab, hint_mask
        else:
            for i, frame_hints in enumerate(hints):
                ab[i], mask[i] = rasterise(frame_hints, w, h) if frame_hints else (0.0, 0.0)
        self._cuda.memcpy_htod_async(buf["hint_ab"].device, ab, self._stream)
        self._cuda.memcpy_htod_async(buf["hint_mask"].device, mask, self._stream)
        return buf["hint_ab"].ptr(), buf["hint_mask"].ptr()

    def _execute(self, states: Sequence[DeviceState], h: int, w: int, hint_ptrs: tuple[int, int]) -> None:
        """Gather states, run the network on what is in the L buffer, scatter next states."""
        cuda, buf, stream, ctx = self._cuda, self._buffers, self._stream, self._context
        b, s = len(states), self.info.state_stride
        nbytes = states[0].nbytes
        for i, st in enumerate(states):
            cuda.memcpy_dtod_async(buf["state_in"].ptr(i * nbytes), st.alloc, nbytes, stream)
        c = self.info.state_channels
        for name, shape in (("L", (b, 1, h, w)), ("hint_ab", (b, 2, h, w)), ("hint_mask", (b, 1, h, w)),
                            ("state", (b, c, h // s, w // s))):
            if not ctx.set_input_shape(name, shape):
                raise EngineError(f"input {name} {shape} is outside the engine's profile ({self.profile.describe()})")
        for name, ptr in (("L", buf["L"].ptr()), ("hint_ab", hint_ptrs[0]), ("hint_mask", hint_ptrs[1]),
                          ("state", buf["state_in"].ptr()), ("ab", buf["ab"].ptr()),
                          ("next_state", buf["state_out"].ptr())):
            ctx.set_tensor_address(name, ptr)
        self._check_output_shape(b, h, w)
        if not ctx.execute_async_v3(stream.handle):
            raise EngineError("TensorRT execution failed (see TensorRT's messages above)")
        for i, st in enumerate(states):
            cuda.memcpy_dtod_async(st.alloc, buf["state_out"].ptr(i * nbytes), nbytes, stream)

    def _check_output_shape(self, b: int, h: int, w: int) -> None:
        if (b, h, w) in self._checked_shapes:
            return
        a = self.info.ab_stride
        got = tuple(self._context.get_tensor_shape("ab"))
        if got != (b, 2, h // a, w // a):
            raise EngineError(f"engine output ab has shape {got}, expected {(b, 2, h // a, w // a)}")
        self._checked_shapes.add((b, h, w))

    def _batches(self, n: int):
        """Slices of at most the profile's max batch (a bigger gather is split, not refused)."""
        for start in range(0, n, self.profile.max_batch):
            yield slice(start, min(n, start + self.profile.max_batch))

    # ---- public ------------------------------------------------------------------------------

    def infer(self, L: np.ndarray, states: Sequence[StreamState], hint_ab: np.ndarray | None = None,
              hint_mask: np.ndarray | None = None) -> np.ndarray:
        b, _, h, w = L.shape
        if (hint_ab is None) != (hint_mask is None):
            raise ValueError("hint_ab and hint_mask go together")
        if self._check_states(states) != (w, h) or len(states) != b:
            raise EngineError(f"one state of network size {w}x{h} per row of L expected")
        out = []
        with self._current():
            self._reserve(h, w)
            buf = self._buffers
            for part in self._batches(b):
                n = part.stop - part.start
                host_l = buf["L"].host[:n * h * w].reshape(n, 1, h, w)
                host_l[:] = L[part]
                self._cuda.memcpy_htod_async(buf["L"].device, host_l, self._stream)
                ptrs = self._upload_hints(None, n, h, w, None if hint_ab is None else hint_ab[part],
                                          None if hint_mask is None else hint_mask[part])
                self._execute(states[part], h, w, ptrs)
                a = self.info.ab_stride
                host_ab = buf["ab"].host[:n * 2 * (h // a) * (w // a)].reshape(n, 2, h // a, w // a)
                self._cuda.memcpy_dtoh_async(host_ab, buf["ab"].device, self._stream)
                self._stream.synchronize()
                out.append(host_ab.copy())
        return out[0] if len(out) == 1 else np.concatenate(out)

    def colorize(self, l8_frames: Sequence[np.ndarray], states: Sequence[StreamState],
                 hints: Sequence[list[Hint] | None] | None = None) -> list[np.ndarray]:
        """Full-resolution BGR frames, with resize, normalisation and merge on the GPU."""
        if not l8_frames:
            return []
        if self._kernels is None:
            return super().colorize(l8_frames, states, hints)
        w, h = self._check_states(states)
        result: list[np.ndarray] = []
        with self._current():
            self._reserve(h, w)
            for part in self._batches(len(l8_frames)):
                result += self._colorize_batch(l8_frames[part], states[part], hints[part] if hints else None, h, w)
        return result

    def _colorize_batch(self, frames, states, hints, h: int, w: int) -> list[np.ndarray]:
        cuda, buf, stream, k = self._cuda, self._buffers, self._stream, self._kernels
        shapes = []
        for f in frames:
            if f.dtype != np.uint8 or f.ndim != 2:
                raise ValueError(f"colorize expects 8-bit L planes (H x W uint8), got {f.dtype} {f.shape}")
            shapes.append(f.shape)
        offsets = np.cumsum([0] + [fh * fw for fh, fw in shapes])
        total = int(offsets[-1])
        # room for a full batch of the largest frame, so steady streams never reallocate
        room = max(total, self.profile.max_batch * max(fh * fw for fh, fw in shapes))
        buf["frames_in"].reserve(room)
        buf["frames_out"].reserve(3 * room)
        staging = buf["frames_in"].host
        for f, off in zip(frames, offsets):
            staging[off:off + f.size].reshape(f.shape)[:] = f
        cuda.memcpy_htod_async(buf["frames_in"].device, staging[:total], stream)
        for i, ((fh, fw), off) in enumerate(zip(shapes, offsets)):
            k.l8_to_network(buf["frames_in"].ptr(int(off)), fw, fh, buf["L"].ptr(i * h * w * F32), w, h, stream)
        ptrs = self._upload_hints(hints, len(frames), h, w)
        self._execute(states, h, w, ptrs)
        a = self.info.ab_stride
        ab_bytes = 2 * (h // a) * (w // a) * F32
        for i, ((fh, fw), off) in enumerate(zip(shapes, offsets)):
            k.merge_l8_ab(buf["frames_in"].ptr(int(off)), fw, fh, buf["ab"].ptr(i * ab_bytes), w // a, h // a,
                          buf["frames_out"].ptr(3 * int(off)), stream)
        out = buf["frames_out"].host[:3 * total]
        cuda.memcpy_dtoh_async(out, buf["frames_out"].device, stream)
        stream.synchronize()
        # copies: the pinned buffer is reused by the next batch while callers keep their frames
        return [out[3 * off:3 * (off + fh * fw)].reshape(fh, fw, 3).copy() for (fh, fw), off in zip(shapes, offsets)]

    def close(self) -> None:
        if self._ctx is None:
            return
        with self._current():
            self._stream.synchronize()
            for b in self._buffers.values():
                b.free()
            # TensorRT objects go before the runtime that made them, and pycuda objects go while
            # the context is current (after detach, pycuda skips their clean-up)
            self._context = self._engine = self._kernels = self._stream = None
            self._runtime = None
        self._ctx.detach()
        self._ctx = None
