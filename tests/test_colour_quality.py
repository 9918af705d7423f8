"""The colour measures users are judged by: the hue measure on constructed images, the contact
sheet, the saturation control, box hints in eval, and the training data mix's per-source cap."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from engines import colour, evaluate, metrics, sheet
from test_evaluate import eval_data, tiny_model  # noqa: F401  (fixtures)

# one colour per hue sector (Lab a, b at L 60), each well inside the sRGB gamut
SECTOR_AB = {"red": (45, 20), "orange_yellow": (10, 45), "foliage": (-35, 35),
             "cyan": (-30, -8), "blue": (8, -45), "magenta": (35, -20)}


def lab_image(blocks: list[tuple[float, float]], size: int = 32) -> np.ndarray:
    """Side-by-side blocks of the given ab at L 60, as 8-bit BGR."""
    lab = np.zeros((size, size * len(blocks), 3), np.float32)
    lab[..., 0] = 60
    for i, (a, b) in enumerate(blocks):
        lab[:, i * size:(i + 1) * size, 1:] = (a, b)
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR) * 255 + 0.5, 0, 255).astype(np.uint8)


def test_hue_measure_perfect_grey_and_constant_tint():
    truth = lab_image(list(SECTOR_AB.values()))
    perfect, grey = metrics.HueScore(), metrics.HueScore()
    perfect.add(truth, truth)
    grey.add(lab_image([(0, 0)] * 6), truth)
    assert perfect.result()["hue_hits"] == 1.0 and perfect.result()["hue_balanced"] == 1.0
    assert grey.result()["hue_hits"] == 0.0 and grey.result()["hue_balanced"] == 0.0
    tint = metrics.HueScore()
    tint.add(lab_image([SECTOR_AB["foliage"]] * 6), truth)
    result = tint.result()
    rates = {k: v["rate"] for k, v in result["hue_sectors"].items()}
    assert rates["foliage"] == 1.0 and all(r == 0.0 for k, r in rates.items() if k != "foliage")
    assert result["hue_balanced"] == pytest.approx(1 / 6)
    # a sector under 2% of the coloured pixels does not count in the balance
    small = metrics.HueScore()
    big = lab_image([SECTOR_AB["blue"]] * 60)
    big[:, :8] = lab_image([SECTOR_AB["red"]], 32)[:, :8]
    small.add(big, big)
    assert small.result()["hue_sectors"]["red"]["share"] < 0.02


def test_hue_measure_ignores_grey_ground_truth_and_needs_output_chroma():
    truth = lab_image([(0, 0), (30, 30)])  # the grey half is not scored
    faint = lab_image([(0, 0), (2, 2)])  # right hue but chroma under 5: no hit
    score = metrics.HueScore()
    score.add(faint, truth)
    assert score.result()["hue_hits"] == 0.0
    score = metrics.HueScore()
    score.add(lab_image([(0, 0), (20, 20)]), truth)
    assert score.result()["hue_hits"] == 1.0


def test_contact_sheet_layout():
    rows = [[np.full((40, 60, 3), v, np.uint8) for v in (0, 100, 200)] for _ in range(2)]
    image = sheet.contact_sheet({"set": rows, "other": rows[:1]}, ["a", "b", "c"], tile_width=60, tile_height=40)
    gap = 4
    assert image.shape == (2 * 2 * sheet.TITLE_HEIGHT + 3 * (40 + gap), 3 * 60 + 4 * gap, 3)
    top = 2 * sheet.TITLE_HEIGHT
    assert (image[top + 10, gap + 10] == 0).all() and (image[top + 10, 2 * gap + 60 + 10] == 100).all()


def test_eval_sheet_hue_and_hinted_variant(tiny_model, eval_data, tmp_path):  # noqa: F811
    out, png = tmp_path / "report.json", tmp_path / "sheets" / "sheet.png"
    rc = evaluate.main(["--model", str(tiny_model), "--engine", "onnxruntime", "--images", str(eval_data / "images"),
                        "--no-videos", "--short-side", "64", "--json", str(out), "--sheet", str(png),
                        "--sheet-samples", "2"])
    assert rc == 0
    report = json.loads(out.read_text())
    a = report["images"]["setA"]
    assert 0 <= a["hue_hits"] <= 1 and 0 <= a["hue_balanced"] <= 1
    assert set(a["hue_sectors"]) == set(metrics.HUE_SECTORS)
    assert a["sepia"]["hue_balanced"] is not None and 5 < a["sepia"]["psnr"] < 60
    assert a["hinted"]["boxes_per_image"] == 3 and a["hinted"]["box_delta_e"] >= 0
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] == 4 * 240 + 5 * 4
    rows = (image.shape[0] - 2 * 2 * sheet.TITLE_HEIGHT) / (160 + 4)
    assert rows == 4  # two samples for each of the two sets
    assert report["sheet"] == str(png)


def test_eval_unwritable_outputs_fail_before_any_work(tiny_model, eval_data, tmp_path, capsys):  # noqa: F811
    (tmp_path / "file").write_text("x")
    rc = evaluate.main(["--model", str(tiny_model), "--images", str(eval_data / "images"), "--no-videos",
                        "--json", str(tmp_path / "file" / "r.json")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--json" in err[0] and "cannot write" in err[0]


def test_box_hint_delta_e_is_zero_where_the_output_has_the_asked_colour():
    truth = lab_image([(30, 10)] * 4)
    boxes = evaluate.hint_boxes(truth, seed=0)
    assert evaluate.hint_delta_e(truth, boxes) < 1.0
    assert evaluate.hint_delta_e(lab_image([(0, 0)] * 4), boxes) > 25


def test_saturation_scales_chroma_and_keeps_l():
    rng = np.random.default_rng(0)
    # smooth L, as in a photo: the gamut fit works at the ab's resolution
    l8 = cv2.resize(rng.integers(40, 220, (6, 8), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_LINEAR)
    ab = rng.normal(0, 25, (2, 12, 16)).astype(np.float32)
    as_predicted = colour.merge_l8_ab(l8, ab.copy())
    assert np.array_equal(colour.merge_l8_ab(l8, colour.scale_chroma(ab.copy(), 1.0)), as_predicted)
    grey = colour.merge_l8_ab(l8, colour.scale_chroma(ab.copy(), 0.0))
    assert np.abs(colour.bgr_to_lab_float(grey)[..., 1:]).max() < 1.5
    strong = colour.merge_l8_ab(l8, colour.scale_chroma(ab.copy(), 2.0))
    chroma = [np.hypot(*colour.bgr_to_lab_float(x)[..., 1:].transpose(2, 0, 1)).mean() for x in (as_predicted, strong)]
    assert chroma[1] > 1.3 * chroma[0]
    # L stays the input's (within the 8-bit round trip), however strong the colours
    assert np.abs(cv2.cvtColor(strong, cv2.COLOR_BGR2Lab)[..., 0].astype(int) - l8).max() <= 3


def test_colorize_saturation_option(tmp_path):
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (6, 8), dtype=np.uint8), (128, 96), interpolation=cv2.INTER_CUBIC)
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), image)
    outs = {}
    for value in ("0", "1", None):
        dst = tmp_path / f"out-{value}.png"
        result = run_cli(["colorize", str(src), str(dst), "--quiet", *(["--saturation", value] if value else [])],
                         timeout=120)
        assert result.returncode == 0, result.stderr
        outs[value] = cv2.imread(str(dst))
    assert np.array_equal(outs["1"], outs[None])  # 1 leaves the output as it was
    assert np.abs(colour.bgr_to_lab_float(outs["0"])[..., 1:]).max() < 1.5  # 0 is grey
    result = run_cli(["colorize", str(src), str(tmp_path / "x.png"), "--saturation", "3"], timeout=60)
    assert result.returncode != 0 and "--saturation 3 is out of range 0..2" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_run_saturation_option_is_checked(tmp_path):
    result = run_cli(["run", "--source", "missing.mp4", "--saturation", "2.5"], timeout=60, cwd=tmp_path)
    assert result.returncode != 0 and "saturation" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_training_mix_caps_every_source():
    pytest.importorskip("torch", reason="the training package needs torch (train extra)")
    from training.data import SequenceSampler, capped_shares

    counts = {"big": 8000, "mid": 3000, "a": 500, "b": 400, "c": 100}
    shares = capped_shares(counts, cap=0.25, reserved=0.2)
    assert sum(shares.values()) == pytest.approx(0.8)
    assert max(shares.values()) <= 0.25 + 1e-9 and shares["big"] == pytest.approx(0.25)
    assert shares["a"] / shares["b"] == pytest.approx(500 / 400)  # the uncapped keep their proportions
    rng = np.random.default_rng(0)
    images = {k: [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)] for k in counts}
    for k, pool in images.items():  # tag each source's photo so a sample tells where it came from
        pool[0][...] = list(counts).index(k) * 40
    sampler = SequenceSampler(images, [], crop=32, steps=1, video_fraction=0.0, source_shares=shares)
    seen = np.bincount([int(round(sampler._still_sequence()[0][0][16, 16, 0] / 40)) for _ in range(4000)],
                       minlength=len(counts)) / 4000
    expected = np.array([shares[k] for k in counts]) / 0.8
    assert np.abs(seen - expected).max() < 0.03
    assert seen.max() < 0.25 / 0.8 + 0.03
