"""Whole pipelines in-process: real video files → engine → ZeroMQ on loopback + mp4 recorder."""
from __future__ import annotations

import cv2
import numpy as np

from conftest import free_port, make_config, pattern_frame, read_video, write_video
from engines.colour import to_l8
from stream import protocol
from stream.pipeline import Pipeline
from stream.subscribers import Subscriber


def start_with_subscriber(config, engine) -> tuple[Pipeline, Subscriber]:
    """Open the pipeline, connect a subscriber and make sure it is subscribed before frames flow."""
    pipeline = Pipeline(config, engine).open()
    subscriber = Subscriber(pipeline.endpoint)
    for _ in range(200):
        pipeline.publisher.send(protocol.encode_end("probe"))
        if subscriber.receive(0.05) is not None:
            break
    else:
        raise AssertionError("subscriber never connected")
    pipeline.start()
    return pipeline, subscriber


def collect(subscriber: Subscriber, streams: set[str], timeout_s: float = 60) -> dict[str, list]:
    """(header, image) per stream until every stream in `streams` has sent its end message."""
    got: dict[str, list] = {s: [] for s in streams}
    ended: set[str] = set()
    for message, image in subscriber.frames(timeout_s=timeout_s):
        if message.end is not None:
            ended.add(message.stream)
            if ended >= streams:
                break
        elif message.stream in got:
            got[message.stream].append((message.header, image))
    assert ended >= streams, f"streams {streams - ended} never ended"
    return got


def l_plane(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)[:, :, 0].astype(np.int16)


def test_file_through_whole_pipeline(tmp_path, engine):
    source = write_video(tmp_path / "clip.mp4", frames=30, width=160, height=120, fps=24)
    config = make_config([{"id": "clip", "file": str(source)}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}", "jpeg_quality": 95},
                         record={"path": str(tmp_path / "out-{stream}.mp4"), "crf": 12})
    pipeline, subscriber = start_with_subscriber(config, engine)
    try:
        received = collect(subscriber, {"clip"})["clip"]
        assert pipeline.wait(60)
    finally:
        pipeline.close()
        subscriber.close()
    stats = pipeline.stats.streams["clip"]
    assert (stats.frames_in, stats.frames_out, stats.dropped) == (30, 30, 0)
    assert pipeline.error is None and stats.ended == ""
    summary = pipeline.stats.summary()
    assert summary.latency_p50_ms is not None and 0 < summary.latency_p50_ms <= summary.latency_p99_ms

    headers = [h for h, _ in received]
    assert [h.seq for h in headers] == list(range(30))
    assert [h.reset for h in headers] == [True] + [False] * 29
    assert all((h.width, h.height, h.fps) == (160, 120, 24.0) for h in headers)
    assert all(h.capture_ns <= h.stages["prep"] <= h.stages["batch"] <= h.stages["engine"] <= h.stages["publish"]
               for h in headers)

    inputs, _ = read_video(source)
    recorded, fps = read_video(tmp_path / "out-clip.mp4")
    assert len(recorded) == 30 and fps == 24.0
    assert recorded[0].shape == inputs[0].shape == received[0][1].shape
    in_l = np.stack([l_plane(i) for i in inputs])
    for name, outputs in (("recorder", recorded), ("zmq", [image for _, image in received])):
        out_l = np.stack([l_plane(o) for o in outputs])
        diff = np.abs(out_l - in_l)
        # the output keeps the input's L; what differs comes from lossy 4:2:0 coding of strong
        # colours and from out-of-gamut clipping: small next to the change from frame to frame
        shifted = np.abs(out_l[1:] - in_l[:-1]).mean()
        assert np.median(diff) <= 2 and diff.mean() < 3.5, f"{name}: L changed by {diff.mean():.2f} on average"
        assert shifted > 2 * diff.mean(), f"{name}: output L is as close to the previous input frame"
        assert (np.stack(outputs)[..., 0] != np.stack(outputs)[..., 2]).mean() > 0.5, "output is not coloured"


def test_odd_sized_colour_input_keeps_size_and_frame_count(tmp_path, engine):
    source = write_video(tmp_path / "odd.mp4", frames=9, width=161, height=91, fps=10, colour=True)
    config = make_config([{"id": "odd", "file": str(source)}], record={"path": str(tmp_path / "rec" / "{stream}.mp4")})
    pipeline = Pipeline(config, engine).open()
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.close()
    recorded, fps = read_video(tmp_path / "rec" / "odd.mp4")
    inputs, _ = read_video(source)
    assert len(recorded) == 9 and fps == 10 and recorded[0].shape == (91, 161, 3)
    diff = np.abs(l_plane(recorded[4]) - l_plane(inputs[4]))
    assert np.median(diff) <= 1


def test_several_streams_keep_their_own_state_and_sequence(tmp_path, engine):
    a = write_video(tmp_path / "a.mp4", frames=12, width=160, height=120)
    b = write_video(tmp_path / "b.mp4", frames=8, width=160, height=120, colour=True)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:03d}.png"), pattern_frame(i * 3, 96, 64))
    port = free_port()
    together = make_config([{"id": "a", "file": str(a)}, {"id": "b", "file": str(b)},
                            {"id": "c", "folder": str(folder)}],
                           publish={"bind": f"tcp://127.0.0.1:{port}", "jpeg_quality": 100})
    alone = make_config([{"id": "a", "file": str(a)}],
                        publish={"bind": f"tcp://127.0.0.1:{port}", "jpeg_quality": 100})
    runs = {}
    for name, config in (("together", together), ("alone", alone)):
        pipeline, subscriber = start_with_subscriber(config, engine)
        try:
            runs[name] = collect(subscriber, {s.id for s in config.sources})
            assert pipeline.wait(60)
        finally:
            pipeline.close()
            subscriber.close()
        if name == "together":
            assert {k: (s.frames_in, s.frames_out) for k, s in pipeline.stats.streams.items()} == \
                {"a": (12, 12), "b": (8, 8), "c": (5, 5)}
            assert pipeline.engine_stage.batched_frames > pipeline.engine_stage.batches  # streams were batched
    got = runs["together"]
    for stream, count in (("a", 12), ("b", 8), ("c", 5)):
        assert [h.seq for h, _ in got[stream]] == list(range(count)), stream
        assert [h.reset for h, _ in got[stream]].count(True) == 1
    assert got["c"][0][1].shape == (64, 96, 3)
    # stream a's colours do not depend on what else shares its batches: its state is its own
    with_others = np.stack([img for _, img in got["a"]]).astype(np.int16)
    by_itself = np.stack([img for _, img in runs["alone"]["a"]]).astype(np.int16)
    leak = np.abs(with_others - by_itself).mean()
    # ... while feeding a's frames with another state would change them
    size = engine.network_size(160, 120, 64)
    own, other = engine.new_state(size), engine.new_state(size)
    engine.colorize([to_l8(pattern_frame(99, 160, 120))], [other])
    frames = [to_l8(img[:, :, 0]) for img in read_video(a)[0][:3]]
    for l8 in frames[:2]:
        engine.colorize([l8], [own])
    swapped = np.abs(engine.colorize([frames[2]], [own])[0].astype(np.int16)
                     - engine.colorize([frames[2]], [other])[0]).mean()
    assert leak < swapped / 3, f"stream a changed by {leak:.3f} when batched with others"


def test_live_source_drops_oldest_and_file_source_drops_nothing(tmp_path, engine):
    clip = write_video(tmp_path / "fast.mp4", frames=60, width=320, height=240)
    live = make_config([{"id": "live", "file": str(clip), "realtime": True, "fps": 1000, "queue": 1}],
                       engine={"kind": "onnxruntime", "short_side": 160, "threads": 1})
    pipeline = Pipeline(live, engine).open()
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.close()
    stats = pipeline.stats.streams["live"]
    assert stats.frames_in == 60 and stats.dropped > 0
    assert stats.frames_out + stats.dropped == stats.frames_in

    steady = make_config([{"id": "file", "file": str(clip), "max_frames": 30}])
    pipeline = Pipeline(steady, engine).open()
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.close()
    stats = pipeline.stats.streams["file"]
    assert (stats.frames_in, stats.frames_out, stats.dropped) == (30, 30, 0)


def test_loop_restarts_state_and_max_frames_ends_stream(tmp_path, engine):
    clip = write_video(tmp_path / "short.mp4", frames=10, width=96, height=64)
    config = make_config([{"id": "loop", "file": str(clip), "loop": True, "max_frames": 25}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    pipeline, subscriber = start_with_subscriber(config, engine)
    try:
        received = collect(subscriber, {"loop"})["loop"]
        assert pipeline.wait(60)
    finally:
        pipeline.close()
        subscriber.close()
    assert [h.seq for h, _ in received] == list(range(25))
    assert [h.seq for h, _ in received if h.reset] == [0, 10, 20]


def test_stop_request_drains_and_closes_files(tmp_path, engine):
    clip = write_video(tmp_path / "long.mp4", frames=200, width=96, height=64)
    config = make_config([{"id": "long", "file": str(clip), "realtime": True}],
                         record={"path": str(tmp_path / "rec" / "{stream}.mp4")})
    pipeline = Pipeline(config, engine).open()
    pipeline.start()
    assert not pipeline.wait(1.0)  # still running after a second (200 frames at 24 fps)
    pipeline.request_stop()
    assert pipeline.wait(30)
    pipeline.close()
    stats = pipeline.stats.streams["long"]
    recorded, _ = read_video(tmp_path / "rec" / "long.mp4")
    assert 0 < stats.frames_out < 200
    assert len(recorded) == stats.frames_out == pipeline.recorder.written["long"][1]
