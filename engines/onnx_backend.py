"""ONNX Runtime engine for CPUs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from engines.backend import Engine, EngineError, ModelInfo, StreamState


class HostState(StreamState):
    def __init__(self, size: tuple[int, int], array: np.ndarray):
        super().__init__(size)
        self.array = array  # 1×C×h'×w' float32


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: Path, threads: int | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops: spinning threads would take the cores that decoding,
        # the colour merge and JPEG need (measured: ~2x the pipeline's fps on 2 cores)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(f"cannot load model {model}: {str(exc).splitlines()[0]}") from None
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._zeros: dict[tuple, np.ndarray] = {}

    def new_state(self, size: tuple[int, int]) -> HostState:
        w, h = size
        i = self.info
        return HostState(size, np.zeros((1, i.state_channels, h // i.state_stride, w // i.state_stride),
                                        np.float32))

    def reset_state(self, state: StreamState) -> None:
        state.array.fill(0)

    def state_to_numpy(self, state: StreamState) -> np.ndarray:
        return state.array.copy()

    def state_from_numpy(self, array: np.ndarray, size: tuple[int, int]) -> HostState:
        expected = self.new_state(size).array.shape
        if array.shape != expected:
            raise EngineError(f"saved state has shape {array.shape}, expected {expected} for input size {size}")
        return HostState(size, np.ascontiguousarray(array, np.float32))

    def _zeros_like(self, shape: tuple) -> np.ndarray:
        z = self._zeros.get(shape)
        if z is None:
            z = self._zeros[shape] = np.zeros(shape, np.float32)
        return z

    def infer(self, L: np.ndarray, states: Sequence[StreamState], hint_ab: np.ndarray | None = None,
              hint_mask: np.ndarray | None = None) -> np.ndarray:
        b, _, h, w = L.shape
        if hint_ab is None:
            hint_ab, hint_mask = self._zeros_like((b, 2, h, w)), self._zeros_like((b, 1, h, w))
        state = states[0].array if b == 1 else np.concatenate([s.array for s in states])
        ab, next_state = self.session.run(None, {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask,
                                                 "state": state})
        for i, s in enumerate(states):
            s.array = next_state[i:i + 1]
        return ab
