"""The engine interface every backend implements, and engine selection.

An engine runs the network on batches gathered across streams. It owns the
recurrent state of each stream (so a GPU backend can keep it on the device) and
the colour maths around the network (`colorize`), which the CPU backends do with
engines.colour and a GPU backend may do on the GPU.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from engines import colour
from engines.hints import Hint, HintMaps, rasterise

log = logging.getLogger("chromacast.engine")

DEFAULT_MODEL = Path(__file__).parent / "weights" / "chromacast-default.onnx"


class EngineError(RuntimeError):
    """An engine could not be opened or run; the message is one line for the user."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a network (from the ONNX metadata)."""

    state_channels: int
    state_stride: int = 16
    ab_stride: int = 4
    size_multiple: int = colour.SIZE_MULTIPLE
    default_short_side: int = 224

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        if meta.get("chromacast.contract") != "1":
            raise EngineError("model is not a chromacast engine model (metadata 'chromacast.contract' missing)")
        return cls(int(meta["state_channels"]), int(meta["state_stride"]), int(meta["ab_stride"]),
                   int(meta["size_multiple"]), int(meta.get("default_short_side", 224)))


class StreamState:
    """One stream's recurrent state, opaque to callers; a backend decides where it lives."""

    def __init__(self, size: tuple[int, int]):
        self.size = size  # network input (w, h) this state belongs to
        self.stream = ""  # the stream's id, set by the state slots (a remote engine names sequences by it)


class Engine(ABC):
    name: str = "engine"
    info: ModelInfo

    @abstractmethod
    def new_state(self, size: tuple[int, int]) -> StreamState:
        """Zero state for a stream whose network input is `size` (w, h)."""

    @abstractmethod
    def reset_state(self, state: StreamState) -> None:
        """Back to zero (scene cut, gap, seek)."""

    def end_state(self, state: StreamState) -> None:
        """The stream ended or went idle: its state is not used again (a remote engine frees it)."""

    @abstractmethod
    def infer(self, L: np.ndarray, states: Sequence[StreamState], hint_ab: np.ndarray | None = None,
              hint_mask: np.ndarray | None = None) -> np.ndarray:
        """Run one batch. L: B×1×h×w float32 in [-1, 1]; states: one per row, advanced in place.
        Returns ab, B×2×(h/ab_stride)×(w/ab_stride) float32 in Lab units."""

    #: the colour asked for by a hint is given to its region after the network (the network
    #: alone spreads it to the object, but may not reach the exact colour): see enforce_hints
    enforce_hints: bool = True

    #: True where colorize() merges on the device (GPU backends): callers must not split it
    #: into predict() + merge(), which would bring float ab back to the host.
    merges_on_device: bool = False

    def colorize(self, l8_frames: Sequence[np.ndarray], states: Sequence[StreamState],
                 hints: Sequence[list[Hint] | None] | None = None) -> list[np.ndarray]:
        """Full-resolution BGR frames from full-resolution 8-bit L planes, one batch.

        All states must share one network size. CPU path: predict() (resize + normalise
        into one batch buffer, infer), then merge() each frame's ab with its own L."""
        ab = self.predict(l8_frames, states, hints)
        return [self.merge(l8, ab[i]) for i, l8 in enumerate(l8_frames)]

    @staticmethod
    def merge(l8: np.ndarray, ab: np.ndarray, l_small: np.ndarray | None = None) -> np.ndarray:
        """BGR frame from its full-resolution L and its low-resolution ab (2×h×w, Lab units).
        Kept apart from predict() so a pipeline can merge on another thread. `l_small`: the
        L plane at ab's size, when the caller has it (colour.merge_l8_ab)."""
        return colour.merge_l8_ab(l8, ab, l_small)

    def predict(self, l8_frames: Sequence[np.ndarray], states: Sequence[StreamState],
                hints: Sequence[list[Hint] | None] | None = None,
                hint_maps: Sequence[HintMaps | None] | None = None) -> np.ndarray:
        """ab (B×2×h×w, network resolution / ab_stride) for a batch of full-resolution L planes.
        `hint_maps`: hints already rasterised at the network size (engines.hints.HintCarrier),
        one entry per frame, used where a frame has no `hints`."""
        w, h = states[0].size
        batch = np.empty((len(l8_frames), 1, h, w), np.float32)
        for i, l8 in enumerate(l8_frames):
            colour.l8_to_network(l8, (w, h), out=batch[i, 0])
        hint_ab = hint_mask = None
        if (hints and any(hints)) or (hint_maps and any(m is not None for m in hint_maps)):
            hint_ab = np.zeros((len(l8_frames), 2, h, w), np.float32)
            hint_mask = np.zeros((len(l8_frames), 1, h, w), np.float32)
            for i in range(len(l8_frames)):
                if hints and hints[i]:
                    hint_ab[i], hint_mask[i] = rasterise(hints[i], w, h)
                elif hint_maps and hint_maps[i] is not None:
                    hint_ab[i], hint_mask[i] = hint_maps[i]
        ab = self.infer(batch, states, hint_ab, hint_mask)
        if hint_mask is not None and self.enforce_hints:
            enforce_hints(ab, hint_ab, hint_mask)
        return ab

    def state_to_numpy(self, state: StreamState) -> np.ndarray:
        """A host copy of `state` (1×C×h'×w' float32), e.g. to save it so a long job can resume."""
        raise NotImplementedError(f"the {self.name} engine cannot export its state")

    def state_from_numpy(self, array: np.ndarray, size: tuple[int, int]) -> StreamState:
        """A stream state for network input `size` (w, h) holding `array` (from state_to_numpy)."""
        raise NotImplementedError(f"the {self.name} engine cannot import a state")

    def network_size(self, width: int, height: int, short_side: int | None = None) -> tuple[int, int]:
        return colour.network_size(width, height, short_side or self.info.default_short_side)

    def close(self) -> None:
        """Release the backend's resources."""


def enforce_hints(ab: np.ndarray, hint_ab: np.ndarray, hint_mask: np.ndarray) -> None:
    """Give hinted regions their colour in `ab` (B×2×h×w, in place): each ab cell moves toward the
    mean hint colour over the network pixels it covers, by the share of them that are hinted, so a
    box gets the asked colour and its edges blend into the network's colours."""
    b, _, h, w = ab.shape
    k = hint_mask.shape[-1] // w
    for i in range(b):
        if not hint_mask[i].any():
            continue
        cover = cv2.resize(hint_mask[i, 0], (w, h), interpolation=cv2.INTER_AREA) if k > 1 else hint_mask[i, 0]
        hinted = cover > 0
        for c in range(2):
            total = cv2.resize(hint_ab[i, c] * hint_mask[i, 0], (w, h), interpolation=cv2.INTER_AREA) if k > 1 \
                else hint_ab[i, c] * hint_mask[i, 0]
            asked = total[hinted] / cover[hinted] * colour.AB_SCALE
            ab[i, c][hinted] += cover[hinted] * (asked - ab[i, c][hinted])


def open_engine(model: Path | str | None = None, kind: str = "auto", threads: int | None = None,
                precision: str = "fp32", **options) -> Engine:
    """The engine named by `kind` (auto | tensorrt | onnxruntime | triton) for `model` (ONNX path).

    `auto` takes TensorRT where it and a GPU are present, else ONNX Runtime, and logs
    one line saying which and why. `precision` int8: ONNX Runtime runs the INT8 model beside
    `model` (engines/quantize.py); TensorRT builds its own FP16 engine from `model`. `triton`
    runs on Triton servers (option `triton`: url, model, timeout_s, retry_s); the model then
    lives in their repository."""
    if kind == "triton":
        from engines.triton_backend import open_triton

        return open_triton(options.get("triton"))
    options.pop("triton", None)
    model = Path(model) if model else DEFAULT_MODEL
    if precision not in ("fp32", "int8"):
        raise EngineError(f"unknown precision {precision!r}; expected fp32 or int8")
    if not model.is_file():
        raise EngineError(f"model file not found: {model}")
    if kind not in ("auto", "tensorrt", "onnxruntime"):
        raise EngineError(f"unknown engine {kind!r}; expected auto, tensorrt, onnxruntime or triton")
    if kind in ("auto", "tensorrt"):
        reason = tensorrt_unavailable_reason()
        if reason is None:
            from engines.tensorrt_backend import TensorRTEngine

            try:
                engine = TensorRTEngine(model, **options)
            except EngineError as exc:  # e.g. an unsupported TensorRT version: auto still runs, on the CPU
                if kind == "tensorrt":
                    raise
                reason = f"TensorRT engine failed: {exc}"
            else:
                log.info("engine: tensorrt (GPU and TensorRT found)")
                return engine
        if kind == "tensorrt":
            raise EngineError(f"engine 'tensorrt' unavailable: {reason}")
        log.info("engine: onnxruntime on CPU (%s)", reason)
    from engines.onnx_backend import OnnxRuntimeEngine

    if precision == "int8":
        from engines.quantize import int8_path

        model = int8_path(model)
        if not model.is_file():
            raise EngineError(f"INT8 model not found: {model} (make it with: chromacast export --int8 "
                              f"--onnx {model.with_name(model.name.replace('.int8', ''))})")
    return OnnxRuntimeEngine(model, threads=threads)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT, pycuda and an NVIDIA GPU are all usable; else why not, in a few words."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no NVIDIA GPU found"
    except ImportError:
        return "pycuda is not installed"
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError without a driver
        return f"CUDA unavailable ({exc})".splitlines()[0]
    return None
