"""The INT8 CPU model: quantized from an FP32 chromacast model, close to it on generated frames,
chosen by `engine.precision`, made by `chromacast export --int8`."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from engines import colour, quantize
from engines.backend import EngineError, open_engine
from stream.config import PipelineConfig
from test_evaluate import colour_texture, tiny_model  # noqa: F401  (fixtures)

onnx = pytest.importorskip("onnx", reason="the int8 extra (onnx) is not installed")

# INT8 against FP32 on the tiny model, Lab units of ab (whose values reach tens of units)
MEAN_TOLERANCE = 1.5
MAX_TOLERANCE = 12.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for source in ("a", "b"):
        (root / source).mkdir()
        for i in range(4):
            cv2.imwrite(str(root / source / f"{i}.png"), colour_texture(96 + 16 * i, 160, rng))
    return root


@pytest.fixture(scope="module")
def int8_model(tiny_model, photos, tmp_path_factory) -> Path:  # noqa: F811
    fp32 = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    shutil.copy(tiny_model, fp32)
    planes = [quantize.l8_at(cv2.imread(str(p)), (96, 64)) for p in quantize.calibration_images(photos, 8)]
    return quantize.quantize_model(fp32, quantize.int8_path(fp32), planes)


def run(session, l8: np.ndarray, state: np.ndarray) -> list[np.ndarray]:
    h, w = l8.shape
    return session.run(None, {"L": colour.l8_to_network(l8, (w, h))[None, None],
                              "hint_ab": np.zeros((1, 2, h, w), np.float32),
                              "hint_mask": np.zeros((1, 1, h, w), np.float32), "state": state})


def test_int8_output_is_close_to_fp32(tiny_model, int8_model):  # noqa: F811
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    state_a = state_b = np.zeros((1, 4, 4, 6), np.float32)
    for _ in range(3):  # a stream of frames: the state carries any error on
        l8 = colour.to_l8(colour_texture(64, 96, rng))
        (ab_a, state_a), (ab_b, state_b) = run(fp32, l8, state_a), run(int8, l8, state_b)
        assert ab_a.shape == ab_b.shape == (1, 2, 16, 24)
        assert np.abs(ab_a).mean() > 1  # colours to compare, not grey
        assert np.abs(ab_b - ab_a).mean() <= MEAN_TOLERANCE
        assert np.abs(ab_b - ab_a).max() <= MAX_TOLERANCE


def test_int8_model_keeps_the_contract_and_decodes_in_fp32(int8_model):
    model = onnx.load(str(int8_model))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["chromacast.contract"] == "1" and meta["precision"] == "int8"
    assert meta["quantized_from"] == "tiny.onnx"
    produced = {o: n for n in model.graph.node for o in n.output}
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)  # convolutions are INT8
    for node in model.graph.node:
        if node.op_type in ("Softmax", "MatMul"):  # the annealed mean
            assert all(produced.get(i) is None or produced[i].op_type != "DequantizeLinear" for i in node.input)
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    assert not [n for n in model.graph.node if head.output[0] in n.input and n.op_type == "QuantizeLinear"]
    for name in quantize.fp32_convolutions(model):
        conv = next(n for n in model.graph.node if n.name == name)
        weight = produced.get(conv.input[1])
        assert weight is None or weight.op_type != "DequantizeLinear"
    with pytest.raises(quantize.QuantizeError, match="already quantized"):
        quantize.quantize_model(int8_model, int8_model.with_name("again.onnx"), [np.zeros((64, 96), np.uint8)])


def test_precision_chooses_the_model_beside_the_fp32_one(int8_model, tmp_path):
    engine = open_engine(int8_model.with_name("tiny.onnx"), "onnxruntime", precision="int8")
    assert engine.info.state_channels == 4
    assert {p.key: p.value for p in onnx.load(str(int8_model)).metadata_props}["precision"] == "int8"
    engine.close()
    alone = tmp_path / "alone.onnx"
    shutil.copy(int8_model.with_name("tiny.onnx"), alone)
    with pytest.raises(EngineError, match="chromacast export --int8 --onnx .*alone.onnx"):
        open_engine(alone, "onnxruntime", precision="int8")
    base = {"sources": [{"id": "a", "file": "x.mp4"}]}
    assert PipelineConfig.model_validate({**base, "engine": {"precision": "int8"}}).engine.precision == "int8"
    assert PipelineConfig.model_validate(base).engine.precision == "fp32"
    with pytest.raises(ValueError):
        PipelineConfig.model_validate({**base, "engine": {"precision": "int4"}})


def test_export_int8_command_on_an_existing_model(tiny_model, photos, tmp_path):  # noqa: F811
    fp32 = tmp_path / "model.onnx"
    shutil.copy(tiny_model, fp32)
    done = run_cli(["export", "--int8", "--onnx", str(fp32), "--calibration", str(photos),
                    "--calibration-images", "4"], timeout=240)
    assert done.returncode == 0, done.stderr
    assert {p.key: p.value for p in onnx.load(str(tmp_path / "model.int8.onnx")).metadata_props}["precision"] == "int8"
    missing = run_cli(["export", "--int8", "--onnx", str(tmp_path / "none.onnx")])
    assert missing.returncode == 1 and "model file not found" in missing.stderr
    alone = run_cli(["export", "--onnx", str(fp32)])
    assert alone.returncode == 2 and "--onnx goes with --int8" in alone.stderr
