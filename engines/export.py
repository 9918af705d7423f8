"""`chromacast export`: the PyTorch network to ONNX with dynamic batch and size.

The exported graph is the engine contract of docs/engine.md; its metadata
carries what the runtime needs (state channels and stride, ab stride, size
multiple, temperature, default input size).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch

from engines.colour import SIZE_MULTIPLE
from engines.network import AB_STRIDE, STATE_STRIDE

INPUT_NAMES = ["L", "hint_ab", "hint_mask", "state"]
OUTPUT_NAMES = ["ab", "next_state"]


def export_onnx(model: torch.nn.Module, path: Path, short_side: int = 224, opset: int = 17,
                extra_metadata: dict | None = None) -> Path:
    """Write `model` (ColorNet contract) to `path` as ONNX; returns the path."""
    model = model.eval().cpu()
    h, w = short_side, short_side
    state_channels = model.state_channels
    args = (torch.zeros(1, 1, h, w), torch.zeros(1, 2, h, w), torch.zeros(1, 1, h, w),
            torch.zeros(1, state_channels, h // STATE_STRIDE, w // STATE_STRIDE))
    dyn = {"L": {0: "batch", 2: "height", 3: "width"}, "hint_ab": {0: "batch", 2: "height", 3: "width"},
           "hint_mask": {0: "batch", 2: "height", 3: "width"},
           "state": {0: "batch", 2: "state_height", 3: "state_width"},
           "ab": {0: "batch", 2: "ab_height", 3: "ab_width"},
           "next_state": {0: "batch", 2: "state_height", 3: "state_width"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, args, str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes=dyn, opset_version=opset, dynamo=False)
    proto = onnx.load(str(tmp))
    meta = {"chromacast.contract": "1", "state_channels": str(state_channels),
            "state_stride": str(STATE_STRIDE), "ab_stride": str(getattr(model, "ab_stride", AB_STRIDE)),
            "size_multiple": str(SIZE_MULTIPLE), "temperature": str(getattr(model, "temperature", "")),
            "default_short_side": str(short_side)}
    meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra_metadata or {}).items()})
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    tmp.unlink()
    return path
