"""Colour from a reference image: matching on generated scenes, colorize and run with references,
`reference: auto` on a clip that switches from colour to grey, bad inputs, and eval's reference rows.
A tiny random colour model (the reference's colours must come through whatever the model), the
shipped feature model, generated data only."""
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines import colour, metrics
from engines.reference import FeatureModel, ReferenceMatcher
from tests.conftest import read_video, run_cli

SHORT_SIDE = "128"


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
def features() -> FeatureModel:
    return FeatureModel(threads=2)


def shapes(h: int, w: int, seed: int) -> np.ndarray:
    """Discs and boxes, each its own colour and stripe texture, on a flat background."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(60, 200, 3)
    y, x = np.mgrid[0:h, 0:w]
    for _ in range(14):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(25, 70)
        col = rng.integers(20, 236, 3)
        ang, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
        tex = 0.75 + 0.25 * np.sin((x * np.cos(ang) + y * np.sin(ang)) * freq)
        inside = ((x - cx) ** 2 + (y - cy) ** 2 < r ** 2) if rng.random() < 0.5 else \
            (abs(x - cx) < r) & (abs(y - cy) < 0.7 * r)
        img[inside] = (col * tex[inside][:, None]).astype(np.uint8)
    return img


def blobs(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour noise with fine grain: nothing like `shapes`."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC).astype(np.float32)
    fine = cv2.resize(rng.normal(0, 40, (h // 4, w // 4)).astype(np.float32), (w, h))
    return np.clip(img + fine[..., None], 0, 255).astype(np.uint8)


def grey(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(colour.to_l8(bgr), cv2.COLOR_GRAY2BGR)


def tinted(bgr: np.ndarray, a: float, b: float) -> np.ndarray:
    """The same lightness under one colour."""
    lab = colour.bgr_to_lab_float(bgr)
    lab[..., 1], lab[..., 2] = a, b
    return colour.lab_float_to_bgr(lab)


def write_frames(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": "0", "preset": "ultrafast"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    """A frame, its reference (the same scene shifted and scaled by 1.15), an unrelated image."""
    big = shapes(320, 480, 0)
    ref = cv2.resize(big[20:300, 10:460], None, fx=1.15, fy=1.15, interpolation=cv2.INTER_AREA)
    return {"frame": big[40:296, 40:424].copy(), "reference": ref, "unrelated": blobs(300, 420, 1)}


def match(features: FeatureModel, reference: np.ndarray, frame: np.ndarray):
    size = colour.network_size(frame.shape[1], frame.shape[0], int(SHORT_SIDE))
    m = ReferenceMatcher(reference, features).match(colour.network_l8(colour.to_l8(frame), size))
    gh, gw = m.mask.shape
    truth = cv2.resize(colour.bgr_to_lab_float(cv2.resize(frame, size, interpolation=cv2.INTER_AREA)), (gw, gh),
                       interpolation=cv2.INTER_AREA)[..., 1:].transpose(2, 0, 1)
    return m, np.hypot(*(m.ab - truth))


def test_shifted_scaled_reference_transfers_its_colours(features, scene, tiny_model, tmp_path):
    m, error = match(features, scene["reference"], scene["frame"])
    assert m.coverage > 0.5  # most of the frame found its place in the reference
    assert np.median(error[m.mask]) < 3 and np.percentile(error[m.mask], 90) < 12  # Lab units; chroma ~21
    cv2.imwrite(str(tmp_path / "frame.png"), grey(scene["frame"]))
    cv2.imwrite(str(tmp_path / "ref.png"), scene["reference"])
    psnr = {}
    for name, extra in (("none", []), ("ref", ["--reference", str(tmp_path / "ref.png")])):
        proc = run_cli(["colorize", str(tmp_path / "frame.png"), str(tmp_path / f"out-{name}.png"), "--model",
                        str(tiny_model), "--short-side", SHORT_SIDE, "--threads", "2", *extra], timeout=120)
        assert proc.returncode == 0, proc.stderr
        psnr[name] = metrics.psnr(cv2.imread(str(tmp_path / f"out-{name}.png")), scene["frame"])
    assert psnr["ref"] > psnr["none"] + 5, psnr


def test_unrelated_reference_takes_nothing(features, scene):
    m, _ = match(features, scene["unrelated"], scene["frame"])
    assert m.coverage < 0.02
    other, _ = match(features, blobs(260, 400, 2), scene["frame"])
    assert other.coverage < 0.02


def test_references_file_ranges_and_debug_map(scene, tiny_model, tmp_path):
    frames = [grey(scene["frame"])] * 6
    src = write_frames(tmp_path / "in.mp4", frames)
    cv2.imwrite(str(tmp_path / "warm.png"), tinted(scene["reference"], 35, 30))
    cv2.imwrite(str(tmp_path / "cool.png"), tinted(scene["reference"], -5, -40))
    (tmp_path / "refs.yaml").write_text("references:\n  - {frames: [0, 2], image: warm.png}\n"
                                        "  - {frames: [3, 5], image: cool.png}\n")
    proc = run_cli(["colorize", str(src), str(tmp_path / "out.mp4"), "--references", str(tmp_path / "refs.yaml"),
                    "--reference-debug", str(tmp_path / "debug.png"), "--model", str(tiny_model),
                    "--short-side", SHORT_SIDE, "--crf", "0", "--threads", "2", "--stabilise", "0"], timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "reference on 6 frames" in proc.stderr
    out, _ = read_video(tmp_path / "out.mp4")
    ab = [colour.bgr_to_lab_float(f)[..., 1:].reshape(-1, 2).mean(0) for f in out]
    assert all(a > 15 and b > 12 for a, b in ab[:3]), ab
    assert all(b < -15 for _, b in ab[3:]), ab
    debug = cv2.imread(str(tmp_path / "debug.png"))
    w, h = colour.network_size(384, 256, int(SHORT_SIDE))
    assert debug.shape[:2] == (h, 3 * w)  # frame | confidence | hints


def test_reference_auto_passes_colour_frames_and_colorizes_grey_ones(scene, tiny_model, tmp_path):
    big = shapes(320, 520, 0)
    colour_frames = [big[40:296, 40 + 4 * i:424 + 4 * i].copy() for i in range(12)]
    clip = colour_frames[:6] + [grey(f) for f in colour_frames[6:]]
    src = write_frames(tmp_path / "cam.mp4", clip)
    runs = {}
    for name, extra in (("auto", ["--reference", "auto"]), ("none", [])):
        proc = run_cli(["run", "--source", str(src), "--no-publish", "--record", str(tmp_path / f"{name}.mp4"),
                        "--model", str(tiny_model), "--short-side", SHORT_SIDE, "--threads", "2",
                        "--engine", "onnxruntime", *extra], timeout=180)
        assert proc.returncode == 0, proc.stderr
        runs[name], logs = read_video(tmp_path / f"{name}.mp4")[0], proc.stderr + proc.stdout
        if name == "auto":
            assert logs.count("switched to grey") == 1 and "switched to colour" not in logs
            assert "1 switch, 6 colour frames passed through" in logs
    auto, none = runs["auto"], runs["none"]
    assert len(auto) == 12
    for out, plain, truth in zip(auto[:6], none[:6], colour_frames[:6]):  # as they came (H.264 aside)
        assert metrics.psnr(out, truth) > 30 and metrics.psnr(out, truth) > metrics.psnr(plain, truth) + 10
    gain = [metrics.psnr(a, t) - metrics.psnr(n, t) for a, n, t in zip(auto[6:], none[6:], colour_frames[6:])]
    assert min(gain) > 4, gain  # the grey frames take the last colour frame's colours


def bad_reference_cases(tmp: Path, scene) -> dict[str, tuple[list[str], str]]:
    cv2.imwrite(str(tmp / "good.png"), scene["reference"])
    cv2.imwrite(str(tmp / "grey.png"), grey(scene["reference"]))
    (tmp / "broken.jpg").write_bytes(b"not an image")

    def refs(name: str, text: str) -> list[str]:
        (tmp / name).write_text(text)
        return ["--references", str(tmp / name)]

    return {
        "missing": (["--reference", str(tmp / "nope.jpg")], f"reference image not found: {tmp / 'nope.jpg'}"),
        "unreadable": (["--reference", str(tmp / "broken.jpg")], "cannot read reference image"),
        "grey": (["--reference", str(tmp / "grey.png")], "is grey: it has no colours to give"),
        "overlap": (refs("o.yaml", "- {frames: [0, 10], image: good.png}\n- {frames: [5, 20], image: good.png}\n"),
                    "entry 2: frames [5, 20] overlaps entry 1's [0, 10]"),
        "unordered": (refs("u.yaml", "- {time: [5, 9], image: good.png}\n- {time: [0, 2], image: good.png}\n"),
                      "entry 2: time [0, 2] comes before entry 1's [5, 9]"),
        "backwards": (refs("b.yaml", "- {frames: [9, 3], image: good.png}\n"), "is not [start, end]"),
        "image in file": (refs("m.yaml", "- {frames: [0, 3], image: nope.png}\n"), "reference image not found"),
    }


def test_bad_reference_inputs_give_one_line(scene, tmp_path):
    src = write_frames(tmp_path / "in.mp4", [grey(scene["frame"])] * 2)
    for name, (args, expected) in bad_reference_cases(tmp_path, scene).items():
        proc = run_cli(["colorize", str(src), str(tmp_path / "out.mp4"), *args])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (name, proc.stderr)
        assert lines[0].startswith("chromacast colorize: ")
        assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out*"))  # no work begun
    proc = run_cli(["run", "--source", str(src), "--no-publish", "--reference", str(tmp_path / "grey.png")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "is grey" in lines[0], proc.stderr


def test_eval_reference_rows(scene, tiny_model, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    big = shapes(320, 520, 0)
    write_frames(videos / "pan.mp4", [big[40:296, 40 + 4 * i:424 + 4 * i].copy() for i in range(4)])
    write_frames(videos / "noise.mp4", [blobs(256, 384, 3)] * 3)
    out = tmp_path / "r.json"
    proc = run_cli(["eval", "--reference", "first-frame", "--videos", str(videos), "--model", str(tiny_model),
                    "--engine", "onnxruntime", "--short-side", SHORT_SIDE, "--network-short-side", SHORT_SIDE,
                    "--json", str(out)], timeout=180)
    assert proc.returncode == 0, proc.stderr
    pan = json.loads(out.read_text())["videos"]["pan"]
    assert pan["frames"] == 4
    assert pan["reference"]["psnr"] > pan["none"]["psnr"] + 3
    assert pan["reference"]["coverage"] > 0.5 and pan["unrelated"]["coverage"] < 0.05
    images = tmp_path / "images" / "set"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), scene["frame"])
    cv2.imwrite(str(tmp_path / "ref.png"), scene["reference"])
    proc = run_cli(["eval", "--reference", str(tmp_path / "ref.png"), "--images", str(tmp_path / "images"),
                    "--model", str(tiny_model), "--engine", "onnxruntime", "--short-side", SHORT_SIDE, "--network-short-side", SHORT_SIDE,
                    "--json", str(out)], timeout=180)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["images"]["set"]
    assert row["reference"]["psnr"] > row["none"]["psnr"] + 3


def test_pipeline_config_reference_colours_a_grey_stream(scene, tiny_model, tmp_path):
    from stream.config import load_config

    src = write_frames(tmp_path / "in.mp4", [grey(scene["frame"])] * 4)
    cv2.imwrite(str(tmp_path / "ref.png"), scene["reference"])
    runs = {}
    for name, ref in (("ref", f"\n    reference: {tmp_path / 'ref.png'}"), ("none", "")):
        (tmp_path / f"{name}.yaml").write_text(
            f"sources:\n  - file: {src}{ref}\nengine: {{kind: onnxruntime, model: {tiny_model}, short_side: 128, "
            f"threads: 2}}\npublish: false\nrecord: {{path: {tmp_path / name}.mp4}}\nstats: {{interval_s: 0}}\n")
        from stream.pipeline import run_pipeline

        pipeline = run_pipeline(load_config(tmp_path / f"{name}.yaml"))
        assert pipeline.error is None
        runs[name] = read_video(tmp_path / f"{name}.mp4")[0]
    gain = [metrics.psnr(r, scene["frame"]) - metrics.psnr(n, scene["frame"]) for r, n in zip(runs["ref"], runs["none"])]
    assert len(gain) == 4 and min(gain) > 4, gain


def test_dense_hints_rasterise_under_user_hints():
    from engines.hints import DenseHint, Hint, rasterise, user_hinted

    dense = DenseHint(np.full((2, 2, 4), 22.0, np.float32), np.array([[True, False, False, False]] * 2))
    user = Hint(0.0, 0.0, 0.125, 0.5, -11.0, 33.0, radius=0.0)
    ab, mask = rasterise([dense, user], 32, 16)
    assert mask[0, :, :8].all() and not mask[0, :, 9:].any()  # the first grid column, at network size
    assert np.allclose(ab[:, :8, :4] * 110, [[[-11]], [[33]]])  # the user's box wins where they overlap
    assert np.allclose(ab[:, 8:, :8] * 110, 22)
    assert user_hinted([dense, user]) and not user_hinted([dense]) and not user_hinted(None)
