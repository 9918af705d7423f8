"""Triton python-backend model: chromacast's own engine behind Triton's sequence batcher.

`chromacast triton-repo` copies this file as `<model>/1/model.py`. Triton routes every
request of one sequence (one chromacast stream) to the same instance; this model keeps each
sequence's recurrent state, keyed by its correlation id, starts it from zero on START,
frees it on END and evicts it when idle (Triton tells a model nothing about idle sequences).
Requests of several sequences arrive in one execute() call and run as one batch per size.
"""
from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

log = logging.getLogger("chromacast.triton_model")


def _flag(request, name: str) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor is not None and bool(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # chromacast itself (and its onnxruntime) may live outside the stub's interpreter
        for path in reversed(json.loads(params.get("chromacast.sys_path", "[]"))):
            if path not in sys.path:
                sys.path.insert(0, path)
        from engines.backend import open_engine

        model = f"{args['model_repository']}/{args['model_version']}/model.onnx"
        threads = int(params.get("chromacast.threads", "0")) or None
        self.engine = open_engine(model, params.get("chromacast.engine", "auto"), threads=threads)
        self.idle_s = float(params.get("chromacast.idle_s", "30"))
        self.states: dict = {}  # correlation id -> (StreamState, last used)

    def execute(self, requests: list) -> list:
        now = time.monotonic()
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        inputs = []
        for i, request in enumerate(requests):
            L = pb_utils.get_input_tensor_by_name(request, "L").as_numpy()
            ab_in = pb_utils.get_input_tensor_by_name(request, "hint_ab")
            mask = pb_utils.get_input_tensor_by_name(request, "hint_mask")
            seq = request.correlation_id()  # the stream id (a string id or a number)
            if _flag(request, "END") and L.shape[-1] == 0:  # chromacast's end marker: no frame
                self.states.pop(seq, None)
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("ab", np.zeros((1, 2, 0, 0), np.float32))])
                inputs.append(None)
                continue
            inputs.append((seq, L, None if ab_in is None else ab_in.as_numpy(),
                           None if mask is None else mask.as_numpy(), _flag(request, "START"),
                           _flag(request, "END")))
            groups.setdefault(L.shape[2:], []).append(i)
        for (h, w), rows in groups.items():
            states = []
            for i in rows:
                seq, _, _, _, start, _ = inputs[i]
                entry = self.states.get(seq)
                if entry is None or start or entry[0].size != (w, h):
                    entry = (self.engine.new_state((w, h)), now)
                self.states[seq] = (entry[0], now)
                states.append(entry[0])
            L = np.concatenate([inputs[i][1] for i in rows])
            hint_ab = hint_mask = None
            if any(inputs[i][2] is not None for i in rows):
                hint_ab = np.concatenate([inputs[i][2] if inputs[i][2] is not None
                                          else np.zeros((1, 2, h, w), np.float32) for i in rows])
                hint_mask = np.concatenate([inputs[i][3] if inputs[i][3] is not None
                                            else np.zeros((1, 1, h, w), np.float32) for i in rows])
            ab = self.engine.infer(L, states, hint_ab, hint_mask)
            for row, i in enumerate(rows):
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("ab", np.ascontiguousarray(ab[row:row + 1]))])
                if inputs[i][5]:  # END with a frame: this was the sequence's last
                    self.states.pop(inputs[i][0], None)
        self._evict(now)
        return responses

    def _evict(self, now: float) -> None:
        for seq in [s for s, (_, used) in self.states.items() if now - used > self.idle_s]:
            del self.states[seq]

    def finalize(self) -> None:
        self.states.clear()
        self.engine.close()
