"""Zhang et al.'s official networks: upstream state-dict layout, export, ONNX Runtime and OpenCV DNN.

The state dicts are random but carry the names and shapes of the released
ECCV16 and SIGGRAPH17 weights, written out here from the upstream layout (so a
renamed or reshaped layer in engines/official.py fails the strict load)."""
import math
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.backend import open_engine
from engines.export import export_onnx
from engines.official import OfficialWeightsError, load_official, seed_eccv16_onnx
from training.cli import export_main

C512 = [512] * 4


def conv_stage(prefix: str, channels: list[int], first_index: int = 0, norm: bool = True) -> list[tuple]:
    """(name, kind, shape) of upstream's [ReLU] (conv, ReLU)… [BN] stage: convs at even offsets."""
    specs, i = [], first_index
    for cin, cout in zip(channels[:-1], channels[1:]):
        specs.append((f"{prefix}.{i}", "conv", (cout, cin, 3, 3)))
        i += 2
    if norm:
        specs.append((f"{prefix}.{i}", "bn", (channels[-1],)))
    return specs


ECCV16_LAYOUT = (
    conv_stage("model1", [1, 64, 64]) + conv_stage("model2", [64, 128, 128])
    + conv_stage("model3", [128, 256, 256, 256]) + conv_stage("model4", [256, 512, 512, 512])
    + conv_stage("model5", C512) + conv_stage("model6", C512) + conv_stage("model7", C512)
    + [("model8.0", "convT", (512, 256, 4, 4)), ("model8.2", "conv", (256, 256, 3, 3)),
       ("model8.4", "conv", (256, 256, 3, 3)), ("model8.6", "conv", (313, 256, 1, 1)),
       ("model_out", "nobias", (2, 313, 1, 1))])

SIGGRAPH17_LAYOUT = (
    conv_stage("model1", [4, 64, 64]) + conv_stage("model2", [64, 128, 128])
    + conv_stage("model3", [128, 256, 256, 256]) + conv_stage("model4", [256, 512, 512, 512])
    + conv_stage("model5", C512) + conv_stage("model6", C512) + conv_stage("model7", C512)
    + [("model8up.0", "convT", (512, 256, 4, 4)), ("model3short8.0", "conv", (256, 256, 3, 3))]
    + conv_stage("model8", [256, 256, 256], first_index=1)
    + [("model9up.0", "convT", (256, 128, 4, 4)), ("model2short9.0", "conv", (128, 128, 3, 3))]
    + conv_stage("model9", [128, 128], first_index=1)
    + [("model10up.0", "convT", (128, 128, 4, 4)), ("model1short10.0", "conv", (128, 64, 3, 3)),
       ("model10.1", "conv", (128, 128, 3, 3)), ("model_class.0", "conv", (529, 256, 1, 1)),
       ("model_out.0", "conv", (2, 128, 1, 1))])


def random_state_dict(layout: list[tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled random weights and plausible batch-norm statistics, upstream names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, kind, shape in layout:
        if kind == "bn":
            sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(shape, generator=g)
            sd[f"{name}.bias"] = 0.1 * torch.randn(shape, generator=g)
            sd[f"{name}.running_mean"] = 0.1 * torch.randn(shape, generator=g)
            sd[f"{name}.running_var"] = 0.5 + torch.rand(shape, generator=g)
            sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)
            continue
        fan_in = shape[1] * shape[2] * shape[3] if kind != "convT" else shape[0] * 4
        sd[f"{name}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        if kind != "nobias":
            sd[f"{name}.bias"] = 0.01 * torch.randn(shape[1] if kind == "convT" else shape[0], generator=g)
    if "model_out.weight" in sd:  # ECCV16: model_out holds bin centres / 110
        sd["model_out.weight"] = (torch.rand(2, 313, 1, 1, generator=g) * 2 - 1) * 0.9
    return sd


def contract_inputs(b: int, h: int, w: int, seed: int = 0, hints: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hint_ab = np.zeros((b, 2, h, w), np.float32)
    hint_mask = np.zeros((b, 1, h, w), np.float32)
    if hints:
        hint_ab[:, 0, 8:16, 8:20], hint_ab[:, 1, 8:16, 8:20] = 0.5, 0.3
        hint_mask[:, :, 8:16, 8:20] = 1
    return {"L": rng.uniform(-1, 1, (b, 1, h, w)).astype(np.float32), "hint_ab": hint_ab, "hint_mask": hint_mask,
            "state": rng.standard_normal((b, 1, h // 16, w // 16)).astype(np.float32)}


def run_torch(model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        ab, state = model(*(torch.from_numpy(feeds[k]) for k in ("L", "hint_ab", "hint_mask", "state")))
    return ab.numpy(), state.numpy()


@pytest.fixture(scope="module")
def eccv16_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("official") / "eccv16.pth"
    torch.save(random_state_dict(ECCV16_LAYOUT), path)
    return path


@pytest.fixture(scope="module")
def siggraph17_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("official") / "siggraph17.pth"
    torch.save(random_state_dict(SIGGRAPH17_LAYOUT, seed=1), path)
    return path


def test_eccv16_strict_load_export_and_ort_match(eccv16_pth: Path, tmp_path: Path):
    out = tmp_path / "eccv16.onnx"
    assert export_main(["--official", "eccv16", "--weights", str(eccv16_pth), "--out", str(out),
                        "--size", "64", "--no-check"]) == 0
    model = load_official("eccv16", eccv16_pth)
    sd = torch.load(eccv16_pth, weights_only=True)
    expected_bins = sd["model_out.weight"][:, :, 0, 0].t() * 110
    assert torch.allclose(model.net.bins(), expected_bins)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["model"] == "zhang-eccv16" and meta["state_channels"] == "1" and meta["temperature"] == "0.38"
    feeds = contract_inputs(2, 64, 96)
    ab, state = sess.run(None, feeds)
    ab_pt, state_pt = run_torch(model, feeds)
    assert ab.shape == (2, 2, 16, 24)
    assert np.abs(ab_pt).max() > 1.0  # a real spread of colours, not a degenerate output
    np.testing.assert_allclose(ab, ab_pt, atol=1e-2, rtol=1e-3)
    np.testing.assert_array_equal(state, feeds["state"])  # not recurrent: passed through
    no_hints = sess.run(None, dict(feeds, hint_ab=0 * feeds["hint_ab"], hint_mask=0 * feeds["hint_mask"]))[0]
    np.testing.assert_allclose(no_hints, ab, atol=1e-6)  # ECCV16 ignores hints


def test_eccv16_decodes_with_the_weights_own_bins():
    sd = random_state_dict(ECCV16_LAYOUT, seed=2)
    bins = torch.zeros(313, 2)
    bins[7] = torch.tensor([40.0, -70.0])
    sd["model_out.weight"] = (bins / 110).t()[:, :, None, None]
    sd["model8.6.weight"].zero_()
    sd["model8.6.bias"] = torch.zeros(313)
    sd["model8.6.bias"][7] = 20.0  # every pixel votes for bin 7
    ab, _ = run_torch(load_official("eccv16", sd), contract_inputs(1, 32, 32, hints=False))
    assert np.allclose(ab[0, 0], 40.0, atol=1e-3) and np.allclose(ab[0, 1], -70.0, atol=1e-3)


def test_siggraph17_strict_load_export_hints_and_engine(siggraph17_pth: Path, tmp_path: Path):
    model = load_official("siggraph17", siggraph17_pth)
    path = export_onnx(model, tmp_path / "sig.onnx", short_side=64, extra_metadata=model.metadata())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = contract_inputs(2, 64, 96, seed=3)
    ab, state = sess.run(None, feeds)
    ab_pt, _ = run_torch(model, feeds)
    assert ab.shape == (2, 2, 16, 24) and np.abs(ab_pt).max() > 1.0
    np.testing.assert_allclose(ab, ab_pt, atol=1e-2, rtol=1e-3)
    np.testing.assert_array_equal(state, feeds["state"])
    no_hints = sess.run(None, dict(feeds, hint_ab=0 * feeds["hint_ab"], hint_mask=0 * feeds["hint_mask"]))[0]
    assert np.abs(no_hints - ab).max() > 1e-3  # SIGGRAPH17 uses the hints
    # the same file runs in the chromacast engine, frame in, frame out
    engine = open_engine(path, kind="onnxruntime", threads=1)
    assert engine.info.state_channels == 1
    l8 = np.random.default_rng(4).integers(0, 256, (50, 70), dtype=np.uint8)
    out = engine.colorize([l8], [engine.new_state(engine.network_size(70, 50, 64))])[0]
    assert out.shape == (50, 70, 3)


def test_siggraph17_output_scaling_of_both_heads():
    sd = random_state_dict(SIGGRAPH17_LAYOUT, seed=5)
    sd["model_out.0.weight"].zero_()
    sd["model_out.0.bias"] = torch.tensor([math.atanh(0.5), math.atanh(-0.25)])  # tanh → 0.5, -0.25
    sd["model_class.0.weight"].zero_()
    sd["model_class.0.bias"] = torch.zeros(529)
    sd["model_class.0.bias"][15 * 23 + 4] = 30.0  # grid bin a = 15·10 − 110 = 40, b = 4·10 − 110 = −70
    feeds = contract_inputs(1, 32, 32)
    ab, _ = run_torch(load_official("siggraph17", sd), feeds)
    assert np.allclose(ab[0, 0], 55.0, atol=1e-3) and np.allclose(ab[0, 1], -27.5, atol=1e-3)
    ab, _ = run_torch(load_official("siggraph17", sd, head="classification"), feeds)
    assert np.allclose(ab[0, 0], 40.0, atol=1e-3) and np.allclose(ab[0, 1], -70.0, atol=1e-3)


def test_weights_that_do_not_fit_are_one_clear_line(eccv16_pth: Path, tmp_path: Path, capsys):
    sd = random_state_dict(ECCV16_LAYOUT)
    del sd["model4.2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(OfficialWeightsError, match="missing model4.2.bias; unexpected extra.weight"):
        load_official("eccv16", sd)
    sd = random_state_dict(ECCV16_LAYOUT)
    sd.pop("model1.4.num_batches_tracked")  # older files lack it: still loads
    load_official("eccv16", sd)
    assert export_main(["--official", "siggraph17", "--weights", str(eccv16_pth),
                        "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("chromacast export: weights do not fit the siggraph17 network") and "\n" not in err
    assert export_main(["--official", "eccv16", "--weights", str(tmp_path / "none.pth"),
                        "--out", str(tmp_path / "x.onnx")]) == 1
    assert "weights file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_seed_eccv16_onnx_runs_in_opencv_dnn(tmp_path: Path):
    path = seed_eccv16_onnx(tmp_path / "seed.onnx")
    net = cv2.dnn.readNetFromONNX(str(path))
    l_minus_50 = np.random.default_rng(6).uniform(-50, 50, (1, 1, 224, 224)).astype(np.float32)
    net.setInput(l_minus_50)
    out = net.forward()
    assert out.shape == (1, 2, 56, 56) and np.isfinite(out).all()
    assert np.abs(out).max() <= 1.0  # ab / 110: a convex mix of in-range bin centres
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"L_minus_50": l_minus_50})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)
