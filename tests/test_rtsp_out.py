"""RTSP out against real clients on 127.0.0.1: ffprobe and ffmpeg read H.264 at each stream's mount,
a late client starts within a second, a stalled client slows nothing, `chromacast restream`
serves another process's publisher, and bad input is one error line."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import av
import cv2
import numpy as np
import pytest

from conftest import free_port, make_config, run_cli, start_cli, write_video
from stream.config import ConfigError, parse_config
from stream.pipeline import Pipeline
from stream.subscribers import Subscriber

pytestmark = [pytest.mark.rtsp,
              pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe/ffmpeg not installed (Debian: ffmpeg)")]


@contextmanager
def running(config, engine) -> Iterator[Pipeline]:
    pipeline = Pipeline(config, engine).open()
    try:
        pipeline.start()
        yield pipeline
    finally:
        pipeline.request_stop()
        pipeline.wait(30)
        pipeline.close()


def live_source(video, sid: str) -> dict:
    return {"file": str(video), "id": sid, "realtime": True, "loop": True}


def wait_mounts(pipeline: Pipeline, *ids: str, timeout: float = 20) -> str:
    """The RTSP base URL, once each stream's first frames have reached the server (its mount exists)."""
    deadline = time.monotonic() + timeout
    while any(pipeline.live.rtsp.frames.get(sid, 0) < 3 for sid in ids):
        assert time.monotonic() < deadline, f"no frames for {ids}"
        time.sleep(0.05)
    return pipeline.live.rtsp.url


def probe(url: str) -> dict:
    done = subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-select_streams", "v:0",
                           "-show_entries", "stream=codec_name,width,height,avg_frame_rate,r_frame_rate",
                           "-of", "json", url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["streams"][0]


def grey_frames(url: str, count: int, width: int, height: int) -> list[np.ndarray]:
    """`count` frames read by ffmpeg from `url`, as 8-bit grey (luma)."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-frames:v", str(count),
                           "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    return list(np.frombuffer(done.stdout, np.uint8).reshape(-1, height, width))


def test_each_stream_at_its_mount_with_its_size_and_fps(tmp_path, engine, rtsp_available):
    a = write_video(tmp_path / "a.mp4", frames=48, width=160, height=120, fps=24)
    b = write_video(tmp_path / "b.mp4", frames=30, width=192, height=144, fps=15)
    config = make_config([live_source(a, "a"), live_source(b, "b")], rtsp={"port": 0},
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    published: list[np.ndarray] = []
    stop = threading.Event()
    with running(config, engine) as pipeline:
        subscriber = Subscriber(pipeline.endpoint, "a")

        def collect() -> None:
            while not stop.is_set():
                for _message, image in subscriber.frames(0.1):
                    if image is not None:
                        published.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
                    if stop.is_set():
                        break

        collector = threading.Thread(target=collect)
        collector.start()
        url = wait_mounts(pipeline, "a", "b")
        info = {sid: probe(url + sid) for sid in ("a", "b")}
        frames = grey_frames(url + "a", 10, 160, 120)
        stop.set()
        collector.join()
        subscriber.close()
    assert info["a"]["codec_name"] == info["b"]["codec_name"] == "h264"
    assert (info["a"]["width"], info["a"]["height"], info["a"]["avg_frame_rate"]) == (160, 120, "24/1"), info
    assert (info["b"]["width"], info["b"]["height"], info["b"]["avg_frame_rate"]) == (192, 144, "15/1"), info
    assert len(frames) == 10 and published
    reference = np.stack(published).astype(np.int16)
    for frame in frames:  # each RTSP frame is one of the published frames, within JPEG + H.264 error
        error = np.abs(reference - frame).mean(axis=(1, 2)).min()
        assert error < 4, error


def test_late_client_starts_within_a_second_and_clients_come_and_go(tmp_path, engine, rtsp_available):
    video = write_video(tmp_path / "v.mp4", frames=48, fps=24)
    config = make_config([live_source(video, "cam")], rtsp={"port": 0, "key_interval_s": 0.5})
    with running(config, engine) as pipeline:
        url = wait_mounts(pipeline, "cam") + "cam"
        first = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        assert first.isOpened() and first.read()[0]
        reading = threading.Event()
        reading.set()

        def keep_reading() -> None:
            while reading.is_set():
                first.read()

        reader = threading.Thread(target=keep_reading)
        reader.start()
        time.sleep(1.2)  # the shared media has been encoding for a while: the next client joins late
        started = time.monotonic()
        options = {"rtsp_transport": "tcp", "fflags": "nobuffer", "probesize": "32", "analyzeduration": "0"}
        with av.open(url, options=options, timeout=10) as late:
            frame = next(late.decode(video=0))
        late_s = time.monotonic() - started
        viewers = pipeline.live.rtsp.viewers
        reading.clear()
        reader.join()
        first.release()
        again = cv2.VideoCapture(url, cv2.CAP_FFMPEG)  # after both left, a new client is served again
        ok, image = again.read()
        again.release()
    assert (frame.width, frame.height) == (160, 120)
    assert late_s < 1.0, late_s  # RTSP setup and a key frame made for it
    assert viewers == 2
    assert ok and image.shape == (120, 160, 3)


def stalled_rtsp_client(url: str) -> socket.socket:
    """DESCRIBE, SETUP (RTP over the RTSP TCP connection) and PLAY, then never read again."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect((host, int(port)))
    replies = conn.makefile("rb")

    def request(method: str, target: str, cseq: int, extra: str = "") -> dict:
        conn.sendall(f"{method} {target} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n".encode())
        fields = {}
        status = replies.readline()
        assert b" 200 " in status, status
        while (line := replies.readline().strip()):
            key, value = line.decode().split(":", 1)
            fields[key.lower()] = value.strip()
        if "content-length" in fields:
            fields["body"] = replies.read(int(fields["content-length"])).decode()
        return fields

    sdp = request("DESCRIBE", url, 1, "Accept: application/sdp\r\n")["body"]
    control = next(line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith("a=control:") and
                   line != "a=control:*")
    track = control if control.startswith("rtsp://") else f"{url}/{control}"
    session = request("SETUP", track, 2, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n")["session"]
    request("PLAY", url, 3, f"Session: {session.split(';')[0]}\r\n")
    return conn


def test_a_stalled_client_never_slows_the_pipeline(tmp_path, engine, rtsp_available):
    video = write_video(tmp_path / "v.mp4", frames=50, width=320, height=240, fps=25)
    config = make_config([live_source(video, "cam")], rtsp={"port": 0, "bitrate_kbps": 8000})
    with running(config, engine) as pipeline:
        url = wait_mounts(pipeline, "cam") + "cam"
        stalled = stalled_rtsp_client(url)
        stats = pipeline.stats.stream("cam")
        before, started = stats.frames_out, time.monotonic()
        time.sleep(4)
        rtsp_taken, out = pipeline.live.rtsp.counts()["cam"][0], stats.frames_out
        rate = (out - before) / (time.monotonic() - started)
        stalled.close()
        time.sleep(0.5)
        after = cv2.VideoCapture(url, cv2.CAP_FFMPEG)  # the server still serves after the stalled one left
        ok = after.read()[0]
        after.release()
    # a client that blocked the pipeline would stop frames_out and drop nearly every frame (the limits
    # leave room for a loaded 2-core machine, where drops come from the CPU)
    assert stats.dropped <= 0.3 * stats.frames_in and rate > 8, (stats.dropped, stats.frames_in, rate)
    assert rtsp_taken >= out - 2  # the RTSP side took every frame meanwhile
    assert ok


def test_restream_serves_another_process_publisher(tmp_path, engine, rtsp_available):
    video = write_video(tmp_path / "v.mp4", frames=48)
    config = make_config([live_source(video, "remote")], publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    port = free_port()
    with running(config, engine) as pipeline:
        restream = start_cli(["restream", "--connect", pipeline.endpoint, "--rtsp-port", str(port)])
        try:
            assert "serving" in restream.stdout.readline()
            deadline = time.monotonic() + 20
            while True:  # the mount appears with the first frame the restreamer receives
                done = subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                                       "stream=codec_name,width,height", "-of", "json",
                                       f"rtsp://127.0.0.1:{port}/remote"], capture_output=True, text=True,
                                      timeout=30)
                if done.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        finally:
            restream.send_signal(signal.SIGINT)
            rc = restream.wait(15)
            restream.stdout.close()
            restream.stderr.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["streams"][0] == {"codec_name": "h264", "width": 160, "height": 120}
    assert rc == 0


def test_rtsp_bad_input_is_one_error_line(tmp_path, rtsp_available):
    video = write_video(tmp_path / "v.mp4", frames=4)
    common = ["run", "--source", str(video), "--no-publish", "--short-side", "64", "-q"]
    done = run_cli(common + ["--rtsp-port", str(free_port())], env={**__import__("os").environ,
                                                                    "CHROMACAST_GST_PYTHON": sys.executable})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "rtsp: GStreamer's RTSP server is not installed" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(common + ["--rtsp-port", str(port)])
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"rtsp: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "frames in" not in done.stdout


def test_a_stream_id_that_is_no_mount_name_is_a_config_error():
    # stream ids never start with '.' (they are file names too), so '..' is refused before RTSP looks
    with pytest.raises(ConfigError, match=r"sources\[1\]\.id: "):
        parse_config("sources: [{webcam: 0}, {webcam: 1, id: '..'}]\nrtsp: true\n", "x.yaml")
    assert parse_config("sources: [{webcam: 1, id: 'cam.1'}]\nrtsp: true\n").rtsp is not None
