"""Fine-tuning from an ONNX export: weights and colour prior read back, only chosen modules train."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra (EfficientNet-Lite) is not installed")

from test_training import colour_texture, train_data, trained  # noqa: E402,F401  (shared fixtures)
from training.cli import export_main, train_main  # noqa: E402
from training.from_onnx import model_from_onnx, prior_from_weights  # noqa: E402
from training.losses import rebalance_weights  # noqa: E402


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert export_main(["--checkpoint", str(trained), "--out", str(out), "--size", "64",
                        "--prior-correction", "0.6"]) == 0
    return out


def test_prior_round_trips_through_rebalancing_weights():
    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.full(50, 0.3))
    np.testing.assert_allclose(prior_from_weights(rebalance_weights(prior).astype(np.float64)), prior,
                               atol=1e-6)


def test_weights_read_back_from_onnx_give_the_same_colours(trained: Path, exported: Path):
    import onnxruntime as ort

    start = torch.load(trained, map_location="cpu", weights_only=False)
    model, prior, meta = model_from_onnx(exported)
    np.testing.assert_allclose(prior, start["prior"], atol=1e-5)  # recovered from the logit bias
    model.logit_bias = -0.6 * torch.as_tensor(rebalance_weights(prior)).log()
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    L = rng.uniform(-1, 1, (2, 1, 64, 96)).astype(np.float32)
    hint_ab = np.zeros((2, 2, 64, 96), np.float32)
    hint_mask = np.zeros((2, 1, 64, 96), np.float32)
    hint_ab[0, :, 8:16, 8:16], hint_mask[0, :, 8:16, 8:16] = 0.4, 1
    state = rng.normal(0, 0.5, (2, 4, 4, 6)).astype(np.float32)
    ab, nxt = sess.run(None, {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask, "state": state})
    with torch.no_grad():
        ab_pt, nxt_pt = model(*(torch.from_numpy(x) for x in (L, hint_ab, hint_mask, state)))
    np.testing.assert_allclose(ab_pt.numpy(), ab, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(nxt_pt.numpy(), nxt, atol=1e-4, rtol=1e-3)


def test_fine_tune_from_onnx_trains_only_the_named_modules(train_data: Path, exported: Path, tmp_path: Path):
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "tuned"), init_from=str(exported), train_only=["gru", "fuse16"], steps=2)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "tune.yaml")]) == 0
    start = model_from_onnx(exported)[0].state_dict()
    tuned = torch.load(tmp_path / "tuned" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    moved = {k.split(".")[0] for k in start if start[k].dtype.is_floating_point
             and not torch.equal(start[k], tuned[k])}
    assert moved == {"gru", "fuse16"}  # batch-norm statistics elsewhere included
    for stat in ("running_mean", "running_var"):  # a folded export's statistics must stay put
        assert torch.equal(tuned[f"fuse16.1.{stat}"], start[f"fuse16.1.{stat}"])
    assert not torch.equal(tuned["fuse16.0.weight"], start["fuse16.0.weight"])
    assert "training only gru, fuse16" in (tmp_path / "tuned" / "train.log").read_text()


def test_fine_tune_bad_input_is_one_line(train_data: Path, trained: Path, exported: Path, tmp_path: Path,
                                         capsys):
    plain = tmp_path / "plain.onnx"  # no --prior-correction: the prior cannot be read back
    assert export_main(["--checkpoint", str(trained), "--out", str(plain), "--size", "64"]) == 0
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    for name, update, message in [("plain", {"init_from": str(plain)}, "without --prior-correction"),
                                  ("unknown", {"train_only": ["gru", "decoder"]}, "train_only names no module decoder"),
                                  ("wider", {"init_from": str(exported), "width": 16}, "do not fit")]:
        cfg_run = {**cfg, "out": str(tmp_path / name), **update}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg_run))
        assert train_main(["--config", str(tmp_path / f"{name}.yaml")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and len([e for e in err if "Traceback" in e]) == 0


def test_keep_first_frame_starts_at_zero_and_holds_colours(train_data: Path, exported: Path, tmp_path: Path):
    """The kept colours are the init_from model's: at the first step the KL to them is zero."""
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "kept"), init_from=str(exported), train_only=["gru", "fuse16", "head"],
               keep_first_frame=1.0, steps=1, lr=1e-3)
    (tmp_path / "kept.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "kept.yaml")]) == 0
    log = (tmp_path / "kept" / "train.log").read_text()
    assert "keep 0.000" in log
    assert train_main(["--config", str(tmp_path / "kept.yaml"), "--steps", "3"]) == 0  # resumes
    assert "keep" in (tmp_path / "kept" / "train.log").read_text().splitlines()[-3]


def test_keep_first_frame_needs_init_from(train_data: Path, tmp_path: Path, capsys):
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "x"), keep_first_frame=1.0)
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "x.yaml")]) == 1
    assert "keep_first_frame needs init_from" in capsys.readouterr().err


def _run_onnx(path: Path, L: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zeros = np.zeros((L.shape[0], 2, *L.shape[2:]), np.float32)
    return tuple(sess.run(None, {"L": L, "hint_ab": zeros, "hint_mask": zeros[:, :1], "state": state}))


def test_memory_fine_tune_changes_later_frames_only(train_data: Path, exported: Path, tmp_path: Path):
    """A memory added to a trained export and fine-tuned alone: the first frame of a stream (zero
    state) keeps the export's colours exactly, later frames use the memory, and the new export
    (state = ConvGRU channels + memory channels) reads back for a further fine-tune."""
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "memory"), init_from=str(exported), memory_channels=3, memory_at_quarter=True,
               train_only=["correct", "memory", "correct4"], steps=3, lr=5e-2, sequence_length=3)
    (tmp_path / "memory.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "memory.yaml")]) == 0
    assert "correct, correct4, memory start fresh" in (tmp_path / "memory" / "train.log").read_text()
    start = model_from_onnx(exported)[0].state_dict()
    tuned_ck = torch.load(tmp_path / "memory" / "checkpoint.pt", map_location="cpu", weights_only=False)
    tuned = tuned_ck["model"]
    assert all(torch.equal(start[k], tuned[k]) for k in start)  # the export's weights, untouched
    for gate in ("correct.gate.weight", "correct4.gate.weight"):  # the memory's gates opened
        assert tuned[gate].abs().sum() > 0

    out = tmp_path / "memory.onnx"
    assert export_main(["--checkpoint", str(tmp_path / "memory" / "checkpoint.pt"), "--out", str(out),
                        "--size", "64", "--prior-correction", "0.6"]) == 0
    rng = np.random.default_rng(5)
    L = rng.uniform(-1, 1, (2, 1, 64, 96)).astype(np.float32)
    ab_before, state_before = _run_onnx(exported, L, np.zeros((2, 4, 4, 6), np.float32))
    ab_first, state = _run_onnx(out, L, np.zeros((2, 7, 4, 6), np.float32))
    np.testing.assert_allclose(ab_first, ab_before, atol=1e-5)  # still images and first frames
    np.testing.assert_allclose(state[:, :4], state_before, atol=1e-5)
    assert np.abs(state[:, 4:]).max() > 0
    ab_second, _ = _run_onnx(out, L, state)
    ab_second_before, _ = _run_onnx(exported, L, state_before)
    # the memory acts on the next frame: well above the 1e-5 agreement of the first frames
    # (this tiny model's colours hardly depend on its input)
    assert np.abs(ab_second - ab_second_before).max() > 1e-4

    model, prior, meta = model_from_onnx(out)  # read back, memory included
    assert meta["memory_channels"] == "3" and meta["memory_at_quarter"] == "true"
    assert model.state_channels == 7 and model.memory_at_quarter
    with torch.no_grad():
        model.logit_bias = -0.6 * torch.as_tensor(rebalance_weights(prior)).log()
        ab_pt, _ = model(torch.from_numpy(L), torch.zeros(2, 2, 64, 96), torch.zeros(2, 1, 64, 96),
                         torch.from_numpy(state))
    np.testing.assert_allclose(ab_pt.numpy(), ab_second, atol=2e-3, rtol=1e-3)


def test_memory_weights_must_fit(train_data: Path, exported: Path, tmp_path: Path, capsys):
    """Memory weights of another size, or a 1/4 correction without a memory, are one error line."""
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "m"), init_from=str(exported), memory_channels=2,
               train_only=["correct", "memory"], steps=1)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "m.yaml")]) == 0
    cfg.update(out=str(tmp_path / "m2"), init_from=str(tmp_path / "m" / "checkpoint.pt"), memory_channels=5)
    (tmp_path / "m2.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "m2.yaml")]) == 1
    assert "do not fit" in capsys.readouterr().err.strip().splitlines()[-1]
    cfg.update(out=str(tmp_path / "m3"), memory_channels=0, memory_at_quarter=True)
    (tmp_path / "m3.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "m3.yaml")]) == 1
    assert "memory_at_quarter needs memory_channels" in capsys.readouterr().err.strip().splitlines()[-1]
