"""RTSP sources against GStreamer's RTSP server on 127.0.0.1 (tests/rtsp/server.py):
frames flow, a restarted camera is reconnected while other streams go on, a camera that
never returns ends its stream cleanly."""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from conftest import free_port, make_config, write_video
from stream import protocol
from stream.pipeline import Pipeline, PipelineError
from stream.subscribers import Subscriber

pytestmark = pytest.mark.rtsp

RECONNECT = {"initial_delay_s": 0.2, "max_delay_s": 1.0, "give_up_after_s": 60, "open_timeout_s": 5,
             "read_timeout_s": 3}


@contextmanager
def running(config, engine) -> Iterator[tuple[Pipeline, Subscriber]]:
    """An open, started pipeline with a subscriber already attached; stopped and closed after."""
    pipeline = Pipeline(config, engine).open()
    subscriber = Subscriber(pipeline.endpoint)
    try:
        for _ in range(200):  # wait until the subscription has reached the publisher
            pipeline.publisher.send(protocol.encode_end("probe"))
            if subscriber.receive(0.05) is not None:
                break
        pipeline.start()
        yield pipeline, subscriber
    finally:
        pipeline.request_stop()
        stopped = pipeline.wait(30)
        pipeline.close()
        subscriber.close()
    assert stopped, "the pipeline did not stop"


def receive_until(subscriber: Subscriber, done, timeout_s: float, log: list) -> None:
    """Append (stream, header) of every frame to `log` until done(log) or the timeout fails the test."""
    deadline = time.monotonic() + timeout_s
    while not done(log):
        assert time.monotonic() < deadline, f"timed out; frames so far per stream: {counts(log)}"
        message = subscriber.receive(0.5)
        if message is not None and message.header is not None:
            log.append((message.stream, message.header))


def counts(log: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for stream, _ in log:
        out[stream] = out.get(stream, 0) + 1
    return out


def test_rtsp_frames_flow(rtsp_server, engine):
    config = make_config([{"id": "cam", "rtsp": rtsp_server.url, "reconnect": RECONNECT}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    log: list = []
    with running(config, engine) as (pipeline, subscriber):
        receive_until(subscriber, lambda log: len(log) >= 15, 60, log)
    seqs = [h.seq for _, h in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all((h.width, h.height) == (160, 120) and h.fps == 25 for _, h in log)
    stats = pipeline.stats.streams["cam"]
    assert stats.frames_out == stats.frames_in - stats.dropped and stats.reconnects == 0


def test_restarted_camera_reconnects_while_other_stream_goes_on(rtsp_server, engine, tmp_path):
    steady = write_video(tmp_path / "steady.mp4", frames=25, width=96, height=64, fps=25)
    config = make_config([{"id": "cam", "rtsp": rtsp_server.url, "reconnect": RECONNECT},
                          {"id": "steady", "file": str(steady), "realtime": True, "loop": True}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    log: list = []
    with running(config, engine) as (pipeline, subscriber):
        receive_until(subscriber, lambda log: counts(log).get("cam", 0) >= 10, 60, log)
        rtsp_server.kill()
        killed_at = len(log)
        # the camera is gone: wait for a quiet second on "cam" while "steady" keeps coming
        quiet_since = [time.monotonic()]

        def cam_quiet(log: list) -> bool:
            if log and log[-1][0] == "cam":
                quiet_since[0] = time.monotonic()
            return time.monotonic() - quiet_since[0] > 1.0

        receive_until(subscriber, cam_quiet, 30, log)
        during_outage = counts(log[killed_at:])
        assert during_outage.get("steady", 0) > 0, "the other stream stopped with the camera"
        rtsp_server.start()
        restarted_at = len(log)
        receive_until(subscriber, lambda log: counts(log[restarted_at:]).get("cam", 0) >= 5, 60, log)
        steady_after = counts(log[restarted_at:]).get("steady", 0)
    stats = pipeline.stats.streams["cam"]
    assert stats.reconnects >= 1 and stats.ended == ""
    cam_after = [h for stream, h in log[restarted_at:] if stream == "cam"]
    assert cam_after[0].reset, "the first frame after a reconnect must start from zero state"
    cam_seqs = [h.seq for stream, h in log if stream == "cam"]
    assert cam_seqs == sorted(cam_seqs)  # one sequence across the reconnect
    steady_seqs = [h.seq for stream, h in log if stream == "steady"]
    assert steady_seqs == sorted(steady_seqs) and steady_after > 0


def test_camera_down_at_start_is_connected_later_while_other_stream_runs(rtsp_server, engine, tmp_path,
                                                                         caplog):
    rtsp_server.kill()
    steady = write_video(tmp_path / "steady.mp4", frames=25, width=96, height=64, fps=25)
    config = make_config([{"id": "cam", "rtsp": rtsp_server.url, "reconnect": RECONNECT},
                          {"id": "steady", "file": str(steady), "realtime": True, "loop": True}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    log: list = []
    with caplog.at_level("INFO", logger="chromacast"), running(config, engine) as (pipeline, subscriber):
        receive_until(subscriber, lambda log: counts(log).get("steady", 0) >= 10, 60, log)
        assert counts(log).get("cam", 0) == 0
        rtsp_server.start()
        receive_until(subscriber, lambda log: counts(log).get("cam", 0) >= 5, 60, log)
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cam: cannot open RTSP")]
    assert waiting and "retrying for up to 60 s" in waiting[0]
    assert any(m.startswith("cam: rtsp ") and "not connected yet" in m and "fps" not in m
               for m in (r.getMessage() for r in caplog.records))
    stats = pipeline.stats.streams["cam"]
    assert stats.ended == "" and stats.reconnects == 0
    cam_seqs = [h.seq for stream, h in log if stream == "cam"]
    assert cam_seqs[0] == 0 and cam_seqs == sorted(cam_seqs)


def test_only_camera_down_at_start_is_an_error(engine):
    config = make_config([{"id": "cam", "rtsp": f"rtsp://127.0.0.1:{free_port()}/none", "reconnect": RECONNECT}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    with pytest.raises(PipelineError, match="cannot open RTSP stream"):
        Pipeline(config, engine).open()


def test_camera_that_never_returns_ends_its_stream(rtsp_server, engine):
    reconnect = dict(RECONNECT, give_up_after_s=1.5)
    config = make_config([{"id": "cam", "rtsp": rtsp_server.url, "reconnect": reconnect}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    log: list = []
    with running(config, engine) as (pipeline, subscriber):
        receive_until(subscriber, lambda log: len(log) >= 5, 60, log)
        rtsp_server.kill()
        assert pipeline.wait(30), "the pipeline did not end after the camera stayed away"
    assert "did not come back within 1.5 s" in pipeline.stats.streams["cam"].ended


def test_stalled_camera_is_reconnected(rtsp_server, engine):
    reconnect = dict(RECONNECT, read_timeout_s=1.0, open_timeout_s=2.0)
    config = make_config([{"id": "cam", "rtsp": rtsp_server.url, "reconnect": reconnect}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    log: list = []
    with running(config, engine) as (pipeline, subscriber):
        receive_until(subscriber, lambda log: len(log) >= 5, 60, log)
        rtsp_server.process.send_signal(signal.SIGSTOP)  # alive but silent: a stalled camera
        try:
            deadline = time.monotonic() + 30
            while pipeline.sources[0].connected:
                assert time.monotonic() < deadline, "the stall was never noticed"
                time.sleep(0.2)
        finally:
            rtsp_server.process.send_signal(signal.SIGCONT)
        resumed_at = len(log)
        receive_until(subscriber, lambda log: len(log) - resumed_at >= 5, 60, log)
    assert pipeline.stats.streams["cam"].reconnects >= 1
    assert any(h.reset for _, h in log[resumed_at:])

