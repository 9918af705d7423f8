"""A training checkpoint rebuilt from a chromacast ONNX export, to fine-tune a shipped model.

The exporter folds each batch norm into the convolution before it, so the ONNX file
holds the folded weights under the convolution's node name (`/blocks.2/_project_conv/Conv`).
They go back into the same ColorNet as convolution weight plus a batch norm that is the
identity except for its shift (the folded bias). The colour prior is recovered from the
logit bias that export adds for `--prior-correction` (bias = -P·log w, w the rebalancing
weights), so the class rebalancing of the original run carries on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from engines.network import ColorNet
from training.losses import REBALANCE_LAMBDA

# the batch norm that follows each convolution, by the convolution's attribute name
BN_AFTER_CONV = {"_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2"}


class OnnxWeightsError(ValueError):
    """The ONNX file is not a chromacast export this code can read weights back from."""


def _metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _logit_bias(proto: onnx.ModelProto, values: dict[str, np.ndarray], bins: int) -> np.ndarray | None:
    """The constant added to the logits just before the temperature division, if any."""
    for node in proto.graph.node:
        if node.op_type == "Add" and not node.name.startswith("/blocks") and not node.name.startswith("/gru"):
            for name in node.input:
                v = values.get(name)
                if v is not None and v.shape == (bins,):
                    return v.astype(np.float64)
    return None


def prior_from_weights(weights: np.ndarray, lam: float = REBALANCE_LAMBDA) -> np.ndarray:
    """Invert rebalance_weights: w = c / ((1-λ)p + λ/Q) with Σp = 1 fixes c = 1 / Σ(1/w)."""
    q = len(weights)
    c = 1.0 / np.sum(1.0 / weights)
    p = (c / weights - lam / q) / (1 - lam)
    p = np.clip(p, 0, None)
    return p / p.sum()


def model_from_onnx(path: Path) -> tuple[ColorNet, np.ndarray | None, dict[str, str]]:
    """ColorNet with the export's weights, the colour prior (None without prior correction), metadata."""
    proto = onnx.load(str(path))
    meta = _metadata(proto)
    if meta.get("model") != "chromacast":
        raise OnnxWeightsError(f"{path} is not a chromacast network export (model={meta.get('model')!r})")
    values = _constants(proto)
    bins = values["bins"].astype(np.float32)
    memory_channels = int(meta.get("memory_channels", "0") or 0)
    state_channels = int(meta["state_channels"]) - memory_channels  # the contract's C holds both
    width = int(values["head.weight"].shape[1])
    model = ColorNet(bins, state_channels, pretrained=False, temperature=float(meta["temperature"]),
                     width=width, encoder_activation=meta.get("encoder_activation", "relu6"),
                     memory_channels=memory_channels,
                     memory_at_quarter=meta.get("memory_at_quarter") == "true")
    modules = dict(model.named_modules())
    loaded: set[str] = set()
    with torch.no_grad():
        for node in proto.graph.node:
            if node.op_type != "Conv":
                continue
            name = _module_name(node.name)
            conv = modules.get(name)
            if not isinstance(conv, torch.nn.Conv2d):
                raise OnnxWeightsError(f"{path}: convolution {node.name!r} has no place in the network")
            w = torch.from_numpy(np.array(values[node.input[1]]))
            b = torch.from_numpy(np.array(values[node.input[2]])) if len(node.input) > 2 else None
            if conv.weight.shape != w.shape:
                raise OnnxWeightsError(f"{path}: {name} has shape {tuple(w.shape)}, "
                                       f"the network wants {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            loaded.add(name)
            if conv.bias is not None:
                conv.bias.copy_(b)
                continue
            if b is None and not _bn_name(name):
                continue  # a convolution without bias or batch norm (MemoryCorrection's gate)
            bn = modules[_bn_name(name)]
            bn.weight.fill_(1.0)
            bn.bias.copy_(b if b is not None else torch.zeros_like(bn.bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
    missing = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and n not in loaded]
    if missing:
        raise OnnxWeightsError(f"{path}: no weights for {', '.join(missing[:3])}")
    correction = float(meta.get("prior_correction", "0") or 0)
    bias = _logit_bias(proto, values, len(bins))
    prior = None
    if correction > 0 and bias is not None:
        prior = prior_from_weights(np.exp(-bias / correction))
    return model.eval(), prior, meta


def _module_name(node_name: str) -> str:
    """'/blocks.2/_project_conv/Conv' → 'blocks.2._project_conv'; '/stem/stem.0/Conv' → 'stem.0'."""
    name = ""
    for seg in node_name.strip("/").split("/")[:-1]:
        name = seg if not name or seg.startswith(name + ".") else f"{name}.{seg}"
    return name


def _bn_name(conv_name: str) -> str:
    """stem.0 → stem.1, dec8.0 → dec8.1, blocks.3._depthwise_conv → blocks.3._bn1."""
    head, _, last = conv_name.rpartition(".")
    if last in BN_AFTER_CONV:
        return f"{head}.{BN_AFTER_CONV[last]}"
    return f"{head}.{int(last) + 1}" if last.isdigit() else ""  # "": none follows


def checkpoint_from_onnx(path: Path) -> dict:
    """A dict shaped like a training checkpoint (model, prior, bins, config, step)."""
    model, prior, meta = model_from_onnx(path)
    if prior is None:
        raise OnnxWeightsError(f"{path} was exported without --prior-correction, so its colour prior "
                               "cannot be recovered; start from its training checkpoint instead")
    return {"model": model.state_dict(), "prior": prior, "bins": model.bins.numpy(),
            "step": int(meta.get("training_step", 0) or 0),
            "config": {"state_channels": model.gru_channels, "memory_channels": model.memory_channels,
                       "memory_at_quarter": model.memory_at_quarter,
                       "width": model.head.weight.shape[1],
                       "temperature": model.temperature, "encoder_activation": model.encoder_activation}}
