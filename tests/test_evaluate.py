"""`chromacast eval` end to end on generated images and a generated video, with a tiny random model."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import colour, evaluate, metrics
from engines.stabilise import StabiliserSettings


def colour_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch", reason="exporting the test model needs torch (train extra)")
    pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra (EfficientNet-Lite) is not installed")
    from engines.export import export_onnx
    from engines.network import ColorNet

    torch.manual_seed(0)
    model = ColorNet(colour.gamut_bins(), state_channels=4, pretrained=False, width=8)
    return export_onnx(model, tmp_path_factory.mktemp("model") / "tiny.onnx", short_side=64)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    for name, sizes in (("setA", [(80, 120), (100, 100), (90, 140)]), ("setB", [(64, 96), (128, 96)])):
        (root / "images" / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            cv2.imwrite(str(root / "images" / name / f"{i}.png"), colour_texture(h, w, rng))
    (root / "videos").mkdir()
    base = colour_texture(96, 200, rng)
    writer = cv2.VideoWriter(str(root / "videos" / "pan.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    for t in range(10):
        writer.write(np.ascontiguousarray(base[:, 3 * t:3 * t + 128]))
    writer.release()
    return root


def test_eval_reports_images_and_videos(tiny_model: Path, eval_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.json"
    rc = evaluate.main(["--model", str(tiny_model), "--engine", "onnxruntime", "--images", str(eval_data / "images"),
                        "--videos", str(eval_data / "videos"), "--short-side", "64", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["images"]) == {"setA", "setB"}
    a = report["images"]["setA"]
    assert a["count"] == 3
    assert 5 < a["psnr"] < 60 and 5 < a["psnr_grey"] < 60
    assert a["colourfulness_grey"] < 2 < a["colourfulness_gt"]  # grey has (almost) no colour
    assert a["colourfulness_gap"] == pytest.approx(abs(a["colourfulness_gt"] - a["colourfulness"]))
    # the grey baseline, recomputed directly for one image
    gt = evaluate.resize_short_side(cv2.imread(str(eval_data / "images" / "setB" / "0.png")), 64)
    assert gt.shape[:2] == (64, 96)
    grey = evaluate.grey_baseline(colour.to_l8(gt))
    b_grey = [metrics.psnr(grey, gt)]
    gt1 = evaluate.resize_short_side(cv2.imread(str(eval_data / "images" / "setB" / "1.png")), 64)
    b_grey.append(metrics.psnr(evaluate.grey_baseline(colour.to_l8(gt1)), gt1))
    assert report["images"]["setB"]["psnr_grey"] == pytest.approx(np.mean(b_grey))

    v = report["videos"]["pan"]
    assert v["frames"] == 10
    for variant in ("state_on", "state_off", "grey", "ground_truth", "carried", "stabilised"):
        assert v[variant]["ewarp"] >= 0 and v[variant]["cdc"] >= 0
    assert v["ground_truth"]["ewarp"] < 2e-3  # a clean pan is (nearly) perfectly warpable
    assert v["state_on"]["psnr"] > 5 and "psnr" not in v["ground_truth"]
    assert v["ewarp_ratio"] == pytest.approx(v["state_on"]["ewarp"] / v["state_off"]["ewarp"])
    # colours copied along the flow of a clean pan stay put: the floor sits at the grey baseline's
    assert v["carried"]["ewarp"] == pytest.approx(v["grey"]["ewarp"], abs=2e-4)
    assert v["carried"]["ewarp"] < v["state_off"]["ewarp"]
    floor = v["carried"]["ewarp"]
    assert v["flicker_left"] == pytest.approx((v["state_on"]["ewarp"] - floor) / (v["state_off"]["ewarp"] - floor))
    assert report["video_mean"]["state_on"]["ewarp"] == pytest.approx(v["state_on"]["ewarp"])
    assert v["stabilised"]["ewarp"] <= v["state_on"]["ewarp"]
    assert v["stabilised_ratio"] == pytest.approx(v["stabilised"]["ewarp"] / v["state_off"]["ewarp"])
    assert report["stabiliser"] == {"strength": 0.85, "tolerance": 10.0, "flow": "fast"}
    table = capsys.readouterr().out
    assert "setA" in table and "pan" in table and "E_warp" in table


def test_stabilised_variant_is_steadier_with_a_real_model(engine, eval_data: Path):
    """The shipped model colours the pan (the tiny random one barely does); the stabiliser
    carries those colours along it, and with strength 0 it is the state-on variant itself."""
    pan = eval_data / "videos" / "pan.mp4"
    on = evaluate.evaluate_video(engine, pan, 96, None, 96)
    assert on["stabilised"]["ewarp"] < 0.95 * on["state_on"]["ewarp"]
    assert on["stabilised"]["psnr"] > on["state_on"]["psnr"] - 0.5
    off = evaluate.evaluate_video(engine, pan, 96, None, 96, StabiliserSettings(0.0))
    assert off["stabilised"] == off["state_on"] == on["state_on"]


def test_a_sweep_scores_each_setting_on_the_same_network_output(engine, eval_data: Path):
    pan = eval_data / "videos" / "pan.mp4"
    swept = evaluate.evaluate_video(engine, pan, 96, None, 96,
                                    sweep=[StabiliserSettings(), StabiliserSettings(0.0), StabiliserSettings(0.5)])
    default, off, half = swept["sweep"]
    assert default == swept["stabilised"]  # the default setting, scored again: the same figures
    assert off["ewarp"] == swept["state_on"]["ewarp"]  # strength 0 is the state-on output itself
    assert default["ewarp"] < half["ewarp"] < off["ewarp"]  # more carried, steadier


def test_stabiliser_sweep_command(tiny_model: Path, eval_data: Path, tmp_path: Path, capsys):
    from benchmarks import stabiliser_sweep

    out = tmp_path / "sweep.json"
    assert stabiliser_sweep.main(["--videos", str(eval_data / "videos"), "--model", str(tiny_model), "--limit", "6",
                                  "--short-side", "64", "--flows", "ultrafast", "fast", "--strengths", "0.8",
                                  "--tolerances", "10", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["flow"], r["strength"]) for r in report["settings"]] == [("ultrafast", 0.8), ("fast", 0.8)]
    assert all(0 < r["ratio"] < 1.5 for r in report["settings"])
    assert set(report["flow_ms"]) == {"ultrafast", "fast", "medium"} and report["flow_ms"]["fast"] > 0
    assert "E_warp/off" in capsys.readouterr().out
    assert stabiliser_sweep.main(["--videos", str(tmp_path / "none"), "--model", str(tiny_model)]) == 1
    assert stabiliser_sweep.main(["--videos", str(eval_data / "videos"), "--model", str(tiny_model),
                                  "--strengths", "1.2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "video folder not found" in err[0] and "strength must be in [0, 1)" in err[1]


def test_eval_limit_and_no_videos(tiny_model: Path, eval_data: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    assert evaluate.main(["--model", str(tiny_model), "--engine", "onnxruntime",
                          "--images", str(eval_data / "images" / "setA"), "--no-videos", "--limit", "2",
                          "--short-side", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["images"]) == {"setA"}  # a folder of images is one dataset
    assert report["images"]["setA"]["count"] == 2 and report["videos"] == {}


def test_eval_missing_data_is_one_line(tiny_model: Path, tmp_path: Path, capsys):
    rc = evaluate.main(["--model", str(tiny_model), "--images", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "image folder not found" in err
    rc = evaluate.main(["--model", str(tmp_path / "none.onnx"), "--no-images", "--videos", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "model file not found" in err


def test_streaming_scores_equal_the_batch_metrics():
    rng = np.random.default_rng(7)
    base = colour_texture(64, 120, rng)
    frames = [np.ascontiguousarray(base[:, 2 * t:2 * t + 96]) for t in range(7)]
    frames[3] = cv2.add(frames[3], np.full_like(frames[3], 30))  # one flickering frame
    greys = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    pairs = metrics.dis_flow_pairs(greys)
    score = evaluate.SequenceScore()
    for t, f in enumerate(frames):
        score.add(f, pairs[t - 1] if t else None, f)
    r = score.result()
    assert r["ewarp"] == pytest.approx(metrics.warp_error(frames, pairs))
    assert r["cdc"] == pytest.approx(metrics.cdc(frames))
    assert r["cdc"] > 0 and r["psnr"] == float("inf")
