"""Zhang et al.'s official colorization networks (ECCV16, SIGGRAPH17) behind the chromacast contract.

`ECCV16Net` and `SIGGRAPH17Net` reproduce the upstream PyTorch module layout of
richzhang/colorization (submodules `model1` … `model8`, `model_out`, …, with the
same Sequential indices), so the released `.pth` state dicts load with
strict=True. The upstream conventions they expect:

- L is fed as (L* − 50) / 100; hint ab as ab / 110; the SIGGRAPH17 hint mask is
  centred, mask − 0.5 (the training code's `mask_cent`).
- ECCV16's `model_out` is a bias-free 1×1 convolution from the 313 bin
  probabilities to ab / 110: its weight matrix *is* the bin centres divided by
  110, so the bins are read from the weights rather than from a separate file.
- SIGGRAPH17 returns a full-resolution regression (tanh, × 110); its
  `model_class` head scores the 23×23 grid of ab bins (step 10 over [−110, 110],
  index = a_index · 23 + b_index) at 1/4 resolution.

`OfficialECCV16` and `OfficialSIGGRAPH17` adapt them to docs/engine.md, so
engines/export.py exports them and every backend runs them unchanged. Neither
network is recurrent: a 1-channel state is passed through untouched.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from engines.colour import AB_SCALE, DEFAULT_TEMPERATURE

L_CENTRE, L_NORM, AB_NORM = 50.0, 100.0, 110.0  # upstream input/output scaling
ECCV16_BINS = 313
SIGGRAPH17_GRID = 23  # 2 * 110 / 10 + 1 bins per axis
SIGGRAPH17_CLASSES = SIGGRAPH17_GRID ** 2
SEED_SIZE = 224  # the ECCV16 tutorial's fixed input side


class OfficialWeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the network; one line for the user."""


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=True)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=True)


def _stage(channels: list[int], last_stride: int = 1, dilation: int = 1, norm: bool = True,
           lead_relu: bool = False) -> nn.Sequential:
    """[ReLU] (conv, ReLU) × n [BatchNorm]: the layout, and so the state-dict indices, of upstream."""
    layers: list[nn.Module] = [nn.ReLU(True)] if lead_relu else []
    pairs = list(zip(channels[:-1], channels[1:]))
    for i, (cin, cout) in enumerate(pairs):
        layers += [_conv(cin, cout, last_stride if i == len(pairs) - 1 else 1, dilation), nn.ReLU(True)]
    if norm:
        layers.append(nn.BatchNorm2d(channels[-1]))
    return nn.Sequential(*layers)


class ECCV16Net(nn.Module):
    """Zhang et al. 2016, "Colorful Image Colorization": L* → 313 bin logits at 1/4 resolution."""

    def __init__(self):
        super().__init__()
        self.model1 = _stage([1, 64, 64], last_stride=2)
        self.model2 = _stage([64, 128, 128], last_stride=2)
        self.model3 = _stage([128, 256, 256, 256], last_stride=2)
        self.model4 = _stage([256, 512, 512, 512])
        self.model5 = _stage([512, 512, 512, 512], dilation=2)
        self.model6 = _stage([512, 512, 512, 512], dilation=2)
        self.model7 = _stage([512, 512, 512, 512])
        self.model8 = nn.Sequential(_up(512, 256), nn.ReLU(True), _conv(256, 256), nn.ReLU(True),
                                    _conv(256, 256), nn.ReLU(True), nn.Conv2d(256, ECCV16_BINS, 1))
        self.model_out = nn.Conv2d(ECCV16_BINS, 2, 1, bias=False)  # bin centres / 110

    def logits(self, l_norm: torch.Tensor) -> torch.Tensor:
        """Bin logits (B×313×H/4×W/4) from L normalised the upstream way, (L* − 50) / 100."""
        x = l_norm
        for stage in (self.model1, self.model2, self.model3, self.model4, self.model5, self.model6,
                      self.model7, self.model8):
            x = stage(x)
        return x

    def bins(self) -> torch.Tensor:
        """The 313 ab bin centres (313×2, Lab units), read from `model_out`."""
        return self.model_out.weight[:, :, 0, 0].t() * AB_NORM


class SIGGRAPH17Net(nn.Module):
    """Zhang et al. 2017, "Real-Time User-Guided Image Colorization": L* + hints → ab."""

    def __init__(self, classes: int = SIGGRAPH17_CLASSES):
        super().__init__()
        self.model1 = _stage([4, 64, 64])
        self.model2 = _stage([64, 128, 128])
        self.model3 = _stage([128, 256, 256, 256])
        self.model4 = _stage([256, 512, 512, 512])
        self.model5 = _stage([512, 512, 512, 512], dilation=2)
        self.model6 = _stage([512, 512, 512, 512], dilation=2)
        self.model7 = _stage([512, 512, 512, 512])
        self.model8up = nn.Sequential(_up(512, 256))
        self.model3short8 = nn.Sequential(_conv(256, 256))
        self.model8 = _stage([256, 256, 256], lead_relu=True)
        self.model9up = nn.Sequential(_up(256, 128))
        self.model2short9 = nn.Sequential(_conv(128, 128))
        self.model9 = _stage([128, 128], lead_relu=True)
        self.model10up = nn.Sequential(_up(128, 128))
        self.model1short10 = nn.Sequential(_conv(64, 128))
        self.model10 = nn.Sequential(nn.ReLU(True), _conv(128, 128), nn.LeakyReLU(0.2))
        self.model_class = nn.Sequential(nn.Conv2d(256, classes, 1))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor, regression: bool = True) -> torch.Tensor:
        """x: (L* − 50)/100, hint ab/110, mask − 0.5 (B×4×H×W, H and W multiples of 8).

        Returns ab/110 at full resolution (regression head) or the grid-bin logits
        at 1/4 resolution (classification head)."""
        conv1 = self.model1(x)
        conv2 = self.model2(conv1[:, :, ::2, ::2])
        conv3 = self.model3(conv2[:, :, ::2, ::2])
        x = self.model4(conv3[:, :, ::2, ::2])
        x = self.model7(self.model6(self.model5(x)))
        conv8 = self.model8(self.model8up(x) + self.model3short8(conv3))
        if not regression:
            return self.model_class(conv8)
        conv9 = self.model9(self.model9up(conv8) + self.model2short9(conv2))
        conv10 = self.model10(self.model10up(conv9) + self.model1short10(conv1))
        return self.model_out(conv10)


def siggraph17_grid_bins() -> torch.Tensor:
    """Centres (529×2, Lab units) of SIGGRAPH17's classification bins, in the head's channel order."""
    axis = torch.arange(SIGGRAPH17_GRID, dtype=torch.float32) * 10.0 - 110.0
    a, b = torch.meshgrid(axis, axis, indexing="ij")  # channel = a_index * 23 + b_index
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


class _ContractWrapper(nn.Module):
    """Shared metadata of the official networks under the engine contract."""

    state_channels = 1  # not recurrent: one channel, passed through
    ab_stride = 4

    def metadata(self) -> dict[str, str]:
        raise NotImplementedError


class OfficialECCV16(_ContractWrapper):
    """ECCV16 under the contract: hints are ignored; ab is the annealed mean over the weights' own bins."""

    def __init__(self, net: ECCV16Net | None = None, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        self.net = net or ECCV16Net()
        self.temperature = temperature

    def forward(self, L: torch.Tensor, hint_ab: torch.Tensor, hint_mask: torch.Tensor,
                state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net.logits(L * (50.0 / L_NORM))  # contract (L*-50)/50 → upstream (L*-50)/100
        # annealed mean in float32; model_out maps probabilities to ab/110 through the bin centres
        p = torch.softmax(logits.float() / self.temperature, dim=1)
        ab = self.net.model_out(p) * AB_NORM
        # the hints must stay graph inputs (every backend feeds all four): touch one pixel of each
        return ab + 0.0 * (hint_ab[:, :1, :1, :1] + hint_mask[:, :, :1, :1]), state

    def metadata(self) -> dict[str, str]:
        return {"model": "zhang-eccv16", "decoder": "annealed-mean", "bins": str(ECCV16_BINS),
                "hints": "ignored", "recurrent": "no"}


class OfficialSIGGRAPH17(_ContractWrapper):
    """SIGGRAPH17 under the contract: hints used; ab from the regression head (upstream's own
    output, average-pooled to 1/4 resolution) or, with head="classification", the annealed
    mean over the 529 grid bins of `model_class`."""

    def __init__(self, net: SIGGRAPH17Net | None = None, head: str = "regression",
                 temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        if head not in ("regression", "classification"):
            raise ValueError(f"unknown SIGGRAPH17 head {head!r}; expected regression or classification")
        self.net = net or SIGGRAPH17Net()
        self.head = head
        self.temperature = temperature if head == "classification" else "none"
        self.register_buffer("grid_bins", siggraph17_grid_bins(), persistent=False)

    def forward(self, L: torch.Tensor, hint_ab: torch.Tensor, hint_mask: torch.Tensor,
                state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # contract hints are already ab/110 (zero off-hint); upstream centres the mask at 0.5
        x = torch.cat([L * (50.0 / L_NORM), hint_ab * (AB_SCALE / AB_NORM), hint_mask - 0.5], 1)
        if self.head == "regression":
            ab = F.avg_pool2d(self.net(x, regression=True).float(), self.ab_stride) * AB_NORM
        else:
            p = torch.softmax(self.net(x, regression=False).float() / self.temperature, dim=1)
            ab = torch.einsum("bqhw,qc->bchw", p, self.grid_bins)
        return ab, state

    def metadata(self) -> dict[str, str]:
        decoder = "regression" if self.head == "regression" else "annealed-mean"
        return {"model": "zhang-siggraph17", "decoder": decoder, "hints": "used", "recurrent": "no"}


OFFICIAL_MODELS = {"eccv16": (ECCV16Net, OfficialECCV16), "siggraph17": (SIGGRAPH17Net, OfficialSIGGRAPH17)}


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain PyTorch state dict from `path` (tensors only; nothing else is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialWeightsError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OfficialWeightsError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OfficialWeightsError(f"{path} is not a PyTorch state dict")
    return sd


def load_official(kind: str, weights: Path | dict | None, **options) -> _ContractWrapper:
    """The contract wrapper for `kind` (eccv16 | siggraph17) with upstream weights loaded strictly.

    `weights` is a .pth path or a state dict; None leaves the random initialisation."""
    if kind not in OFFICIAL_MODELS:
        raise OfficialWeightsError(f"unknown official model {kind!r}; expected one of {', '.join(OFFICIAL_MODELS)}")
    net_cls, wrapper_cls = OFFICIAL_MODELS[kind]
    net = net_cls()
    if weights is not None:
        sd = weights if isinstance(weights, dict) else load_state_dict_file(weights)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise OfficialWeightsError(f"weights do not fit the {kind} network: {_mismatch(net, sd, exc)}") from None
    return wrapper_cls(net, **options).eval()


def _mismatch(net: nn.Module, sd: dict, exc: RuntimeError) -> str:
    """A short description of why a state dict does not load (first few names only)."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = [f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    return "; ".join(parts) or str(exc).splitlines()[0]


class _SeedECCV16(nn.Module):
    """The tutorial route's graph: L* − 50 (1×1×224×224) → model_out(softmax(logits)) = ab/110 at 56×56."""

    def __init__(self, net: ECCV16Net):
        super().__init__()
        self.net = net

    def forward(self, l_minus_50: torch.Tensor) -> torch.Tensor:
        return self.net.model_out(torch.softmax(self.net.logits(l_minus_50 / L_NORM), dim=1))


def seed_eccv16_onnx(path: Path, net: ECCV16Net | None = None, seed: int = 0, opset: int = 13) -> Path:
    """Write the ECCV16 network as a plain fixed-shape ONNX for OpenCV DNN (the benchmark's seed route).

    Input `L_minus_50` is 1×1×224×224 (L* − 50); output `ab_norm` is 1×2×56×56, ab / 110
    as upstream's `model_out` gives it (multiply by 110 for Lab units), no annealing,
    no batching. Without `net`, the weights are random but shaped like the release, and
    `model_out` holds 313 real grid points near the ab origin, so outputs stay in range."""
    if net is None:
        torch.manual_seed(seed)
        net = ECCV16Net()
        grid = siggraph17_grid_bins()
        nearest = grid[grid.norm(dim=1).argsort()[:ECCV16_BINS]]
        with torch.no_grad():
            net.model_out.weight.copy_((nearest / AB_NORM).t()[:, :, None, None])
    model = _SeedECCV16(net.eval()).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 1, SEED_SIZE, SEED_SIZE),), str(path),
                          input_names=["L_minus_50"], output_names=["ab_norm"], opset_version=opset,
                          dynamo=False)
    return path
