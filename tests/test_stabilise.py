"""The flow-guided colour stabiliser: alone on synthetic motion, and inside a live pipeline."""
from __future__ import annotations

import time

import av
import cv2
import numpy as np
import pytest

from conftest import free_port, make_config
from engines import metrics
from engines.stabilise import ColourStabiliser, StabiliserSettings, Stabilisers
from stream import protocol
from stream.pipeline import Pipeline
from stream.subscribers import Subscriber

STRIDE = 4
H, W = 96, 128  # full-resolution L; the network would see it at this size, ab at 24×32


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth random grey texture: structure everywhere, so optical flow has something to follow."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def upsampled(ab: np.ndarray) -> np.ndarray:
    """ab (2×h×w) at the network's input size, as the stabiliser carries and returns it."""
    return np.ascontiguousarray(cv2.resize(ab.transpose(1, 2, 0), (W, H), interpolation=cv2.INTER_LINEAR)
                                .transpose(2, 0, 1))


def at_ab(ab: np.ndarray) -> np.ndarray:
    """The stabiliser's output (network size) back at ab size, to compare with ab-size truth."""
    size = (W // STRIDE, H // STRIDE)
    return cv2.resize(ab.transpose(1, 2, 0), size, interpolation=cv2.INTER_AREA).transpose(2, 0, 1)


def noisy(ab: np.ndarray, rng: np.random.Generator, sigma: float = 6.0) -> np.ndarray:
    return (ab + rng.normal(0, sigma, ab.shape)).astype(np.float32)


def test_still_scene_flicker_fades_and_colour_stays():
    rng = np.random.default_rng(1)
    l8 = texture(W, H)
    truth = np.zeros((2, H // STRIDE, W // STRIDE), np.float32)
    truth[0], truth[1] = 20, -10
    stab = ColourStabiliser(StabiliserSettings(0.8, 10.0), STRIDE)
    raw, out = [], []
    for _ in range(30):
        ab = noisy(truth, rng)
        raw.append(ab.copy())
        out.append(stab.apply(l8, ab).copy())
    raw_flicker = np.abs(np.diff(np.stack(raw[10:]), axis=0)).mean()
    out_flicker = np.abs(np.diff(np.stack(out[10:]), axis=0)).mean()
    assert out_flicker < 0.4 * raw_flicker
    assert np.abs(np.stack(out[10:]).mean(axis=(0, 2, 3)) - [20, -10]).max() < 1.0
    assert np.array_equal(out[0], raw[0])  # the first frame is the network's own
    assert out[1].shape == (2, H, W)  # then carried and returned at the network's input size


def test_colours_follow_the_motion_without_a_trail():
    rng = np.random.default_rng(2)
    wide = texture(W + 80, H, seed=3)
    step = 4  # pixels per frame at full resolution: one ab pixel
    stab = ColourStabiliser(StabiliserSettings(0.8, 10.0), STRIDE)
    errors_raw, errors_out = [], []
    for t in range(16):
        l8 = np.ascontiguousarray(wide[:, 80 - step * t:80 - step * t + W])  # content moves right
        truth = np.zeros((2, H // STRIDE, W // STRIDE), np.float32)
        x0 = 2 + t  # a red patch riding on the texture, one ab pixel a frame
        truth[0, 8:16, x0:x0 + 6] = 60
        ab = noisy(truth, rng)
        errors_raw.append(np.abs(ab - truth)[:, :, 2:-2].mean())
        out = at_ab(stab.apply(l8, ab))
        errors_out.append(np.abs(out - truth)[:, :, 2:-2].mean())
        if t == 15:
            # the patch has left columns 2..8: a stabiliser that ignored the motion would leave red there
            assert out[0, 8:16, 3:9].mean() < 8
            assert out[0, 9:15, x0 + 1:x0 + 5].mean() > 50
    assert np.mean(errors_out[6:]) < 0.6 * np.mean(errors_raw[6:])


def test_a_new_scene_takes_the_network_colours():
    stab = ColourStabiliser(StabiliserSettings(0.9, 10.0), STRIDE)
    shape = (2, H // STRIDE, W // STRIDE)
    stab.apply(texture(W, H, seed=4), np.full(shape, 30, np.float32))
    other = 255 - texture(W, H, seed=5)  # nothing in common with the first frame
    out = stab.apply(other, np.full(shape, -30, np.float32))
    assert np.median(out) < -27


def test_strength_zero_is_off_and_saved_arrays_resume_exactly():
    rng = np.random.default_rng(6)
    frames = [np.ascontiguousarray(texture(W + 40, H, seed=7)[:, 40 - 2 * t:40 - 2 * t + W]) for t in range(8)]
    abs_ = [noisy(np.zeros((2, H // STRIDE, W // STRIDE)), rng) for _ in frames]
    off = ColourStabiliser(StabiliserSettings(0.0), STRIDE)
    assert all(np.array_equal(off.apply(l, a.copy()), a) for l, a in zip(frames, abs_))

    whole = ColourStabiliser(StabiliserSettings(), STRIDE)
    expected = [whole.apply(l, a.copy()).copy() for l, a in zip(frames, abs_)]
    first = ColourStabiliser(StabiliserSettings(), STRIDE)
    for l, a in zip(frames[:4], abs_[:4]):
        first.apply(l, a.copy())
    saved = {k: v.copy() for k, v in first.to_arrays().items()}
    resumed = ColourStabiliser(StabiliserSettings(), STRIDE)
    resumed.load_arrays(saved)
    again = [resumed.apply(l, a.copy()) for l, a in zip(frames[4:], abs_[4:])]
    assert all(np.array_equal(a, b) for a, b in zip(again, expected[4:]))
    assert not np.allclose(expected[5], upsampled(abs_[5]), atol=0.5)  # it did change something
    resumed.load_arrays({})  # nothing saved (a reset stabiliser): starts fresh
    assert np.array_equal(resumed.apply(frames[0], abs_[0].copy()), abs_[0])


def test_streams_are_kept_apart_and_restart():
    shape = (2, H // STRIDE, W // STRIDE)
    l8 = texture(W, H)
    many = Stabilisers(StabiliserSettings(0.8), STRIDE)
    many.apply("a", l8, np.full(shape, 40, np.float32), restart=True)
    many.apply("b", l8, np.full(shape, -40, np.float32), restart=True)
    b = many.apply("b", l8, np.zeros(shape, np.float32), restart=False)
    assert np.allclose(b, -32, atol=0.5)  # b's own previous colours, none of a's
    fresh = many.apply("a", l8, np.zeros(shape, np.float32), restart=True)
    assert np.array_equal(fresh, np.zeros(shape))
    many.end("a")
    many.end("b")
    assert many.stream_count == 0


@pytest.mark.parametrize("strength, tolerance, flow", [(1.0, 10, "medium"), (-0.1, 10, "medium"),
                                                     (0.5, 0, "medium"), (0.5, 10, "slow")])
def test_bad_settings_are_refused(strength, tolerance, flow):
    with pytest.raises(ValueError, match="stabiliser"):
        StabiliserSettings(strength, tolerance, flow)


def run_and_collect(config, engine) -> tuple[list[np.ndarray], Stabilisers | None]:
    pipeline = Pipeline(config, engine).open()
    subscriber = Subscriber(pipeline.endpoint)
    try:
        for _ in range(200):
            pipeline.publisher.send(protocol.encode_end("probe"))
            if subscriber.receive(0.05) is not None:
                break
        pipeline.start()
        images = []
        for message, image in subscriber.frames(timeout_s=60):
            if message.end is None:
                images.append(image)
            elif message.stream == "clip":
                break
        assert pipeline.wait(60) and pipeline.error is None
        stabilisers = pipeline.output_stage.stabilisers
    finally:
        pipeline.close()
        subscriber.close()
    return images, stabilisers


def write_pan(path, frames: int = 16) -> tuple:
    """A grey texture panning 2 px a frame (real motion for the flow), as an mp4; and its frames."""
    wide = texture(160 + 2 * frames, 120, seed=8)
    images = [np.ascontiguousarray(wide[:, 2 * t:2 * t + 160]) for t in range(frames)]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24, options={"crf": "12"})
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        for g in images:
            out.mux(video.encode(av.VideoFrame.from_ndarray(g, format="gray")))
        out.mux(video.encode(None))
    return path, images


def test_pipeline_stabilises_each_stream(tmp_path, engine):
    clip, inputs = write_pan(tmp_path / "pan.mp4")
    runs = {}
    for name, strength in (("off", 0.0), ("on", 0.8)):
        config = make_config([{"id": "clip", "file": str(clip)}],
                             state={"stabiliser": {"strength": strength, "flow": "medium"}},
                             publish={"bind": f"tcp://127.0.0.1:{free_port()}", "jpeg_quality": 100})
        runs[name], stabilisers = run_and_collect(config, engine)
        if strength == 0:
            assert stabilisers is None
        else:
            assert stabilisers.settings == StabiliserSettings(0.8, 10.0, "medium")  # the config's, all of it
            assert stabilisers.stream_count == 0  # freed at the end of the stream
    off, on = runs["off"], runs["on"]
    assert len(off) == len(on) == 16
    assert np.abs(on[0].astype(np.int16) - off[0]).mean() < 0.5  # first frame: nothing to carry yet
    flow = metrics.DisFlow()
    pairs = [flow.pair(a, b) for a, b in zip(inputs, inputs[1:])]

    def warp_error(frames):
        return np.mean([metrics.pair_warp_error(a, b, p) for a, b, p in zip(frames, frames[1:], pairs)])

    assert warp_error(on) < 0.9 * warp_error(off), (warp_error(on), warp_error(off))


def test_output_stage_shows_hinted_frames_as_the_network_gives_them():
    from engines.colour import merge_l8_ab
    from stream.frame import Frame, FrameHeader
    from stream.queues import BoundedQueue, QueueClosed
    from stream.stages import OutputStage
    from stream.stats import Stats

    l8 = texture(W, H)
    shape = (2, H // STRIDE, W // STRIDE)
    source, out = BoundedQueue(8, name="in"), BoundedQueue(8, name="out")
    errors: list[str] = []
    stage = OutputStage(source, Stats(), None, [out], errors.append,
                        stabilisers=Stabilisers(StabiliserSettings(0.8), STRIDE))
    stage.start()
    plan = [(True, False, 30.0), (False, False, -30.0), (False, True, -30.0), (False, False, 0.0)]
    for seq, (reset, hinted, a) in enumerate(plan):  # (state restarted, fed with hints, network's a)
        header = FrameHeader("s", seq, time.monotonic_ns(), W, H, 25.0)
        header.reset = reset
        header.stamp("engine")
        frame = Frame(header, l8, l8, ab=np.full(shape, a, np.float32), l_net=l8)
        frame.hinted = hinted
        source.put(frame)
    source.close()
    got = []
    while True:
        try:
            got.append(out.get())
        except QueueClosed:
            break
    stage.join(10)
    assert not errors and len(got) == 4
    a_of = [float(np.median(cv2.cvtColor(f.colour, cv2.COLOR_BGR2Lab)[..., 1].astype(np.float32) - 128)) for f in got]
    assert a_of[1] > -5  # a plain frame: mostly the previous frame's +30 carried over
    assert np.array_equal(got[2].colour, merge_l8_ab(l8, np.full(shape, -30.0, np.float32)))  # hinted: as given
    assert a_of[3] < -15  # and carried on from there


def test_idle_stream_stabiliser_is_freed():
    import time as _time

    from engines.stabilise import Stabilisers

    stabilisers = Stabilisers(StabiliserSettings(), 4)
    l_net = np.zeros((32, 32), np.uint8)
    ab = np.zeros((2, 8, 8), np.float32)
    stabilisers.apply("a", l_net, ab, restart=False)
    stabilisers.apply("b", l_net, ab, restart=False)
    _time.sleep(0.05)
    stabilisers.apply("b", l_net, ab, restart=False)
    assert stabilisers.evict_idle(0.03) == ["a"]
    assert stabilisers.stream_count == 1
