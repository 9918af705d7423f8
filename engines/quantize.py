"""INT8 CPU model: ONNX Runtime static quantization of any chromacast ONNX model.

QDQ format, weights per output channel (int8), activations per tensor (uint8) from
min/max ranges calibrated on photos run through the model as a pipeline feeds it (network
size, zero state and the state after one frame, hints on some). Only the convolutions are
quantized, and not all of them (`fp32_convolutions`): the bin logits and the annealed-mean
decoding (softmax over the ab bins, the bins' mean) stay FP32. The INT8 file sits next to the FP32 one (`int8_path`) and is chosen
by `engine_precision: int8` in a config.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from engines import colour

log = logging.getLogger("chromacast.quantize")

CALIBRATION_SIZE = (288, 160)  # the live configs' network input for 16:9 (short side 160)
# training photos (never in the repository): ../shared/data/train/scenes beside the checkout
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "scenes"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class QuantizeError(RuntimeError):
    """A model or calibration set that cannot be quantized; str() is one line."""


def int8_path(model: Path) -> Path:
    """Where the INT8 model of `model` lives: beside it, `NAME.int8.onnx`."""
    model = Path(model)
    return model.with_name(model.stem + ".int8.onnx")


def calibration_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` image files drawn evenly from `folder`'s sub-folders (each a photo source)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QuantizeError(f"no images under {folder}")
    groups: dict[Path, list[Path]] = {}
    for p in files:
        groups.setdefault(p.parent, []).append(p)
    rng = np.random.default_rng(seed)
    for group in groups.values():
        rng.shuffle(group)
    picked: list[Path] = []
    while len(picked) < min(count, len(files)):  # round-robin over sources
        for group in groups.values():
            if group and len(picked) < count:
                picked.append(group.pop())
    return picked


def l8_at(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image's 8-bit L, centre-cropped to the aspect of `size` (w, h) and resized to it."""
    l8 = colour.to_l8(image)
    h, w = l8.shape
    tw, th = size
    if w * th > h * tw:  # too wide
        cw = h * tw // th
        l8 = l8[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = w * th // tw
        l8 = l8[(h - ch) // 2:(h - ch) // 2 + ch]
    return colour.network_l8(np.ascontiguousarray(l8), size)


class _Feeds:
    """Calibration inputs: per image, a first frame (zero state, hints on every third) and a
    second one with the state the FP32 model left, as a stream's frames come."""

    def __init__(self, model: Path, planes: Sequence[np.ndarray], seed: int = 0):
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        channels, stride = int(meta["state_channels"]), int(meta["state_stride"])
        rng = np.random.default_rng(seed)
        self.feeds: list[dict[str, np.ndarray]] = []
        for i, l8 in enumerate(planes):
            h, w = l8.shape
            L = colour.l8_to_network(l8, (w, h))[None, None]
            hint_ab = np.zeros((1, 2, h, w), np.float32)
            hint_mask = np.zeros((1, 1, h, w), np.float32)
            if i % 3 == 0:
                for _ in range(3):
                    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
                    hint_ab[0, :, y:y + 8, x:x + 8] = rng.uniform(-0.8, 0.8, (2, 1, 1))
                    hint_mask[0, :, y:y + 8, x:x + 8] = 1
            first = {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask,
                     "state": np.zeros((1, channels, h // stride, w // stride), np.float32)}
            _, state = session.run(None, first)
            self.feeds += [first, {"L": L, "hint_ab": np.zeros_like(hint_ab), "hint_mask": np.zeros_like(hint_mask),
                                   "state": state}]

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        feeds = self.feeds

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it: Iterator = iter(feeds)

            def get_next(self):
                return next(self._it, None)

            def rewind(self):
                self._it = iter(feeds)

        return Reader()


def fp32_convolutions(model) -> list[str]:
    """The convolutions of `model` (an onnx.ModelProto) left in FP32: the first (its input is the picture itself), the last
    (the bin logits, which the annealed mean at T = 0.38 sharpens 2.6x) and the depthwise
    ones (one filter per channel: measured on the shipped model, their INT8 error was most
    of the whole network's, for little of its time)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    keep = {convs[0].name, convs[-1].name} if convs else set()
    for node in convs:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            keep.add(node.name)
    return [n.name for n in convs if n.name in keep]


def quantize_model(model: Path, out: Path, planes: Sequence[np.ndarray], reduce_range: bool = True,
                   exclude: Sequence[str] | None = None) -> Path:
    """Write the INT8 (QDQ) model of the chromacast ONNX `model` to `out`, calibrated on
    `planes` (8-bit L images, all of one size, sides multiples of 32), and return `out`.

    `reduce_range`: 7-bit weights, which keeps AVX2's u8×s8 multiply-adds from saturating
    (CPUs without VNNI; without it the shipped model's error was 4x). `exclude`: names of
    convolutions to keep in FP32 (default: fp32_convolutions)."""
    import onnx  # the int8 extra
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, out = Path(model), Path(out)
    source = onnx.load(str(model))
    meta = {p.key: p.value for p in source.metadata_props}
    if meta.get("chromacast.contract") != "1":
        raise QuantizeError(f"{model} is not a chromacast engine model (no chromacast.contract metadata)")
    if meta.get("precision") == "int8":
        raise QuantizeError(f"{model} is already quantized")
    if not planes:
        raise QuantizeError("no calibration images")
    if exclude is None:
        exclude = fp32_convolutions(source)
    feeds = _Feeds(model, planes)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference and graph fusions first, as ONNX Runtime's quantizer expects
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)  # dynamic sizes defeat the symbolic pass
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        quantize_static(str(prepared), str(part), feeds.reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    quantized = onnx.load(str(part))
    del quantized.metadata_props[:]
    for key, value in {**meta, "precision": "int8", "quantized_from": model.name,
                       "calibration_frames": str(len(feeds.feeds))}.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(part))
    part.replace(out)
    return out


def quantize_file(model: Path, out: Path | None = None, calibration: Path = DEFAULT_CALIBRATION,
                  images: int = 64) -> Path:
    """`chromacast export --int8`: the INT8 model of `model` at `out` (default int8_path),
    calibrated on `images` photos from `calibration`."""
    model = Path(model)
    if not model.is_file():
        raise QuantizeError(f"model file not found: {model}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise QuantizeError("--int8 needs onnx: pip install 'chromacast[int8]'") from None
    out = Path(out) if out else int8_path(model)
    if out.resolve() == model.resolve():
        raise QuantizeError("the INT8 model would replace its FP32 source; choose another --out")
    planes = []
    for path in calibration_images(calibration, images):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            planes.append(l8_at(image, CALIBRATION_SIZE))
    log.info("calibrating on %d images from %s", len(planes), calibration)
    return quantize_model(model, out, planes)
