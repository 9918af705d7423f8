"""Hints carried through a shot along the motion (engines.hints.HintCarrier) and through
`chromacast colorize` and the live pipeline's engine stage."""
from __future__ import annotations

import cv2
import numpy as np

from engines.hints import Hint, HintCarrier, rasterise


def texture(w: int = 160, h: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)


def test_carried_hint_follows_the_motion():
    scene = texture(200)
    carrier = HintCarrier()
    frames = [np.ascontiguousarray(scene[:, 40 - 4 * t:200 - 4 * t]) for t in range(6)]  # pans right
    maps = carrier.step(frames[0], rasterise([Hint(0.25, 0.3, 0.375, 0.6, 40.0, -30.0, radius=0)], 160, 96))
    x0 = np.flatnonzero(maps[1][0].any(0))[0]
    for t in range(1, 6):
        maps = carrier.step(frames[t], None)
    cols = np.flatnonzero(maps[1][0].any(0))
    assert abs(cols[0] - (x0 + 20)) <= 2  # moved with the content, 4 px a frame
    inside = maps[1][0] > 0
    assert np.allclose(maps[0][0][inside] * 110, 40.0) and np.allclose(maps[0][1][inside] * 110, -30.0)


def test_carried_hint_drops_where_the_content_changed_and_resets():
    carrier = HintCarrier()
    a, b = texture(seed=1), texture(seed=2)  # unrelated frames: a scene change the flow cannot follow
    carrier.step(a, rasterise([Hint(0.2, 0.2, 0.6, 0.8, 30.0, 30.0, radius=0)], 160, 96))
    assert carrier.active
    maps = carrier.step(b, None)
    kept = 0 if maps is None else maps[1].mean()
    assert kept < 0.05
    carrier.reset()
    assert not carrier.active and carrier.step(a, None) is None


def test_new_hints_are_laid_over_carried_ones_and_resume_exactly():
    frame = texture()
    carrier = HintCarrier()
    carrier.step(frame, rasterise([Hint(0.1, 0.1, 0.5, 0.5, 20.0, 0.0, radius=0)], 160, 96))
    maps = carrier.step(frame, rasterise([Hint(0.3, 0.3, 0.7, 0.7, -20.0, 10.0, radius=0)], 160, 96))
    assert maps[0][0, 20, 24] * 110 == np.float32(20.0) and np.isclose(maps[0][0, 40, 80] * 110, -20.0)
    other = HintCarrier()
    other.load_arrays(carrier.to_arrays())
    nxt = np.roll(frame, 2, axis=1)
    a, b = carrier.step(nxt, None), other.step(nxt, None)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ---------------------------------------------------------------- the shipped model: hints that take

MODEL_ARGS: list[str] = []  # the shipped model
HINT_DELTA_E = 12.0  # stated limit: mean ab distance to the asked colour inside a box hint


def test_shipped_model_gives_a_box_hint_its_colour_through_the_shot(tmp_path):
    import av

    from conftest import run_cli

    # a panning grey scene at mid lightness, where a clear blue is inside the gamut
    scene = cv2.resize(np.random.default_rng(3).integers(70, 150, (12, 40), dtype=np.uint8), (400, 120),
                       interpolation=cv2.INTER_CUBIC)
    src = tmp_path / "pan.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=24, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for t in range(30):
            grey = np.ascontiguousarray(scene[:, 120 - 2 * t:280 - 2 * t])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                                                             format="bgr24")))
        out.mux(stream.encode(None))
    blue = np.array([[[0xc8, 0x78, 0x3a]]], np.float32) / 255  # #3a78c8, a clear blue, as BGR
    asked = cv2.cvtColor(blue, cv2.COLOR_BGR2Lab)[0, 0, 1:]
    (tmp_path / "hints.yaml").write_text(
        "hints:\n  - frame: 0\n    boxes:\n      - {box: [0.25, 0.25, 0.625, 0.75], colour: \"#3a78c8\"}\n")
    for name, extra in (("hinted", ["--hints", str(tmp_path / "hints.yaml")]), ("plain", [])):
        result = run_cli(["colorize", str(src), str(tmp_path / f"{name}.mp4"), "--quiet", "--crf", "8", *MODEL_ARGS, *extra],
                         timeout=180)
        assert result.returncode == 0, result.stderr

    def box_ab(name: str, index: int) -> np.ndarray:
        with av.open(str(tmp_path / f"{name}.mp4")) as c:
            frame = next(f for i, f in enumerate(c.decode(video=0)) if i == index).to_ndarray(format="bgr24")
        lab = cv2.cvtColor(frame.astype(np.float32) / 255, cv2.COLOR_BGR2Lab)
        x0 = 40 + 2 * index  # the box moves with the scene, 2 px a frame
        return lab[36:84, x0 + 6:x0 + 54, 1:].reshape(-1, 2).mean(0)

    for index in (0, 12, 29):  # the hinted frame, and the rest of the shot
        assert np.hypot(*(box_ab("hinted", index) - asked)) <= HINT_DELTA_E, index
        assert np.hypot(*(box_ab("plain", index) - asked)) > 2 * HINT_DELTA_E, index


def test_enforced_hint_gives_the_box_its_colour_and_leaves_the_rest():
    from engines.backend import enforce_hints

    ab = np.full((1, 2, 8, 10), 5.0, np.float32)
    hint_ab, hint_mask = (m[None] for m in rasterise([Hint(0.0, 0.0, 0.5, 0.5, -20.0, 30.0, radius=0)], 40, 32))
    enforce_hints(ab, hint_ab, hint_mask)
    assert np.allclose(ab[0, :, :4, :5], [[[-20.0]], [[30.0]]])  # inside: the asked colour
    assert np.allclose(ab[0, :, 4:, :], 5.0) and np.allclose(ab[0, :, :, 5:], 5.0)  # outside: untouched
