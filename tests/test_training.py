"""Training loop (a few CPU steps, resumable) and export of the network (ONNX Runtime vs PyTorch)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra (EfficientNet-Lite) is not installed")

from engines.backend import open_engine  # noqa: E402
from engines.colour import gamut_bins, to_l8  # noqa: E402
from engines.export import export_onnx  # noqa: E402
from engines.network import ColorNet  # noqa: E402
from training.cli import export_main, train_main  # noqa: E402


def colour_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "images" / f"img{i}.png"), colour_texture(96, 128, rng))
    (root / "videos").mkdir()
    base = colour_texture(96, 160, rng)
    writer = cv2.VideoWriter(str(root / "videos" / "pan.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    for t in range(8):
        writer.write(np.ascontiguousarray(base[:, 3 * t:3 * t + 128]))
    writer.release()
    cfg = {"images": str(root / "images"), "videos": str(root / "videos"), "out": str(root / "run"),
           "cache_short_side": 64, "crop": 64, "sequence_length": 2, "video_fraction": 0.5, "batch_size": 2,
           "steps": 2, "state_channels": 4, "width": 8, "pretrained": False, "threads": 2,
           "checkpoint_every": 1, "log_every": 1}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def trained(train_data: Path) -> Path:
    assert train_main(["--config", str(train_data / "config.yaml"), "--steps", "2"]) == 0
    return train_data / "run" / "checkpoint.pt"


def test_training_writes_checkpoint_and_logs_loss(trained: Path):
    ck = torch.load(trained, map_location="cpu", weights_only=False)
    assert ck["step"] == 2
    assert ck["config"]["width"] == 8 and ck["prior"].shape == (len(gamut_bins()),)
    log = (trained.parent / "train.log").read_text()
    assert "step 2/2" in log and "loss" in log


def test_training_resumes_step_count(train_data: Path, trained: Path):
    before = torch.load(trained, map_location="cpu", weights_only=False)
    assert train_main(["--config", str(train_data / "config.yaml"), "--steps", "3"]) == 0
    after = torch.load(trained, map_location="cpu", weights_only=False)
    assert after["step"] == 3
    assert "resumed from" in (trained.parent / "train.log").read_text()
    moved = [k for k in before["model"] if before["model"][k].dtype.is_floating_point
             and not torch.equal(before["model"][k], after["model"][k])]
    assert moved, "resumed training did not update the weights"


def test_fine_tune_starts_from_other_weights(train_data: Path, trained: Path, tmp_path: Path):
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())
    cfg.update(out=str(tmp_path / "tuned"), init_from=str(trained), lr=1e-12)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "tune.yaml"), "--steps", "1"]) == 0
    start = torch.load(trained, map_location="cpu", weights_only=False)
    tuned = torch.load(tmp_path / "tuned" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert tuned["step"] == 1  # a new run, not a resume
    assert torch.allclose(tuned["model"]["head.weight"], start["model"]["head.weight"], atol=1e-6)
    assert np.array_equal(tuned["prior"], start["prior"])


def test_stem_trains_until_freeze_from_then_stays(train_data: Path, tmp_path: Path):
    cfg = yaml.safe_load((train_data / "config.yaml").read_text())

    def run(name: str, freeze_from: int, steps: int) -> dict:
        cfg.update(out=str(tmp_path / name), freeze_blocks=1, freeze_from=freeze_from, steps=steps)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert train_main(["--config", str(tmp_path / f"{name}.yaml")]) == 0
        return torch.load(tmp_path / name / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]

    frozen_at_once = run("at-once", 0, 2)  # the stem keeps its initial weights
    late = run("late", 2, 2)  # the stem (hint channels included) learns for two steps
    assert not torch.equal(late["stem.0.weight"], frozen_at_once["stem.0.weight"])
    resumed = run("late", 2, 4)  # resumed past freeze_from: the stem stays, the head moves on
    assert torch.equal(resumed["stem.0.weight"], late["stem.0.weight"])
    assert not torch.equal(resumed["head.weight"], late["head.weight"])


def test_encoder_activation_is_relu6_and_old_checkpoints_load_as_swish(trained: Path, tmp_path: Path):
    from training.train import load_checkpoint
    torch.manual_seed(0)
    relu6 = ColorNet(gamut_bins(), state_channels=4, pretrained=False, width=8).eval()
    swish = ColorNet(gamut_bins(), state_channels=4, pretrained=False, width=8, encoder_activation="swish").eval()
    swish.load_state_dict(relu6.state_dict())
    x = torch.randn(1, 4, 64, 64) * 3
    state = relu6.zero_state(1, 64, 64)
    with torch.no_grad():
        a = relu6.logits(x[:, :1], x[:, 1:3], x[:, 3:], state)[0]
        b = swish.logits(x[:, :1], x[:, 1:3], x[:, 3:], state)[0]
    assert not torch.allclose(a, b, atol=1e-3)  # the option reaches the encoder blocks
    with pytest.raises(ValueError, match="relu6 or swish"):
        ColorNet(gamut_bins(), pretrained=False, width=8, encoder_activation="gelu")
    assert load_checkpoint(trained).encoder_activation == "relu6"
    ck = torch.load(trained, map_location="cpu", weights_only=False)
    del ck["config"]["encoder_activation"]  # a checkpoint from before the option
    torch.save(ck, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").encoder_activation == "swish"


def test_clip_flow_grid_lines_frames_up(train_data: Path):
    """The grid from DIS flow on a real (panning) clip must map each frame onto the previous
    one far better than leaving it in place: that is what the temporal loss relies on."""
    from training.data import SequenceSampler, load_clips
    from training.losses import temporal_loss

    clips = load_clips(train_data / "videos", 96)
    sampler = SequenceSampler([], clips, 64, 3, video_fraction=1.0)
    batch = sampler.batch(4)
    ab = torch.as_tensor(batch.lab[:, :, 1:])
    grid, trust = torch.as_tensor(batch.grid), torch.as_tensor(batch.trust)
    identity = torch.as_tensor(np.stack(np.meshgrid(*[(2 * np.arange(64) + 1) / 64 - 1] * 2), -1),
                               dtype=torch.float32).expand_as(grid[:, 1])
    for t in (1, 2):
        assert trust[:, t].mean() > 0.5
        aligned = temporal_loss(ab[:, t], ab[:, t - 1], grid[:, t], trust[:, t])
        unaligned = temporal_loss(ab[:, t], ab[:, t - 1], identity, trust[:, t])
        assert aligned < 0.5 * unaligned, (aligned, unaligned)


def test_train_bad_input_is_one_line(tmp_path: Path, capsys):
    assert train_main(["--config", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("crop: 50\n")
    assert train_main(["--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "crop" in err
    ok_but_no_images = tmp_path / "noimg.yaml"
    ok_but_no_images.write_text(f"images: {tmp_path / 'nowhere'}\n")
    assert train_main(["--config", str(ok_but_no_images)]) == 1
    assert "training image folder not found" in capsys.readouterr().err


def test_export_cli_from_checkpoint_runs_in_engine(trained: Path, tmp_path: Path):
    out = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(trained), "--out", str(out), "--size", "64"]) == 0
    engine = open_engine(out, kind="onnxruntime", threads=1)
    assert engine.info.state_channels == 4
    frame = colour_texture(72, 100, np.random.default_rng(5))
    l8 = to_l8(frame)
    state = engine.new_state(engine.network_size(100, 72, 64))
    bgr = engine.colorize([l8], [state])[0]
    assert bgr.shape == (72, 100, 3) and bgr.dtype == np.uint8
    assert np.abs(to_l8(bgr).astype(int) - l8).max() <= 3  # the input's own L is kept


def test_export_cli_bad_input(tmp_path: Path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_matches_pytorch_with_state_and_hints(tmp_path: Path):
    torch.manual_seed(0)
    model = ColorNet(gamut_bins(), state_channels=4, pretrained=False, width=8).eval()
    path = export_onnx(model, tmp_path / "tiny.onnx", short_side=64)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    b, h, w = 2, 64, 96  # batch of two streams, non-square, not the export size
    state_np = np.zeros((b, 4, h // 16, w // 16), np.float32)
    state_pt = torch.zeros(b, 4, h // 16, w // 16)
    hint_ab = np.zeros((b, 2, h, w), np.float32)
    hint_mask = np.zeros((b, 1, h, w), np.float32)
    hint_ab[0, 0, 10:18, 20:30], hint_ab[0, 1, 10:18, 20:30] = 0.5, -0.4
    hint_mask[0, 0, 10:18, 20:30] = 1
    states = []
    for t in range(4):
        L = rng.uniform(-1, 1, (b, 1, h, w)).astype(np.float32)
        ab, state_np = sess.run(None, {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask, "state": state_np})
        with torch.no_grad():
            ab_pt, state_pt = model(*(torch.from_numpy(x) for x in (L, hint_ab, hint_mask)), state_pt)
        assert ab.shape == (b, 2, h // 4, w // 4)
        np.testing.assert_allclose(ab, ab_pt.numpy(), atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(state_np, state_pt.numpy(), atol=1e-4, rtol=1e-3)
        states.append(state_np.copy())
    assert np.abs(states[-1] - states[0]).max() > 1e-3, "state did not evolve over frames"
    # the state and the hints both reach the output
    no_state = sess.run(None, {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask,
                               "state": np.zeros_like(state_np)})[0]
    no_hint = sess.run(None, {"L": L, "hint_ab": np.zeros_like(hint_ab), "hint_mask": np.zeros_like(hint_mask),
                              "state": states[-2]})[0]
    assert np.abs(no_state - ab).max() > 1e-4
    assert np.abs(no_hint[0] - ab[0]).max() > 1e-4


def test_export_decoding_options_change_the_colours(trained: Path, tmp_path: Path):
    """--prior-correction undoes the class rebalancing and --temperature anneals: both are baked
    into the exported graph and change what a user gets (here: less extreme chroma)."""
    rng = np.random.default_rng(1)
    l8 = to_l8(colour_texture(64, 96, rng))
    chroma = {}
    for name, extra in [("plain", []), ("calibrated", ["--prior-correction", "1"]),
                        ("mean", ["--temperature", "1"])]:
        out = tmp_path / f"{name}.onnx"
        assert export_main(["--checkpoint", str(trained), "--out", str(out), "--size", "64", *extra]) == 0
        engine = open_engine(out, "onnxruntime", threads=1)
        state = engine.new_state(engine.network_size(96, 64))
        ab = engine.predict([l8], [state])
        chroma[name] = float(np.hypot(ab[0, 0], ab[0, 1]).mean())
    assert chroma["calibrated"] != pytest.approx(chroma["plain"], abs=1e-3)
    assert chroma["mean"] != pytest.approx(chroma["plain"], abs=1e-3)
    assert export_main(["--checkpoint", str(trained), "--out", str(tmp_path / "x.onnx"),
                        "--prior-correction", "2"]) == 1
