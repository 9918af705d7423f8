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
