"""The browser viewer on real sockets: MJPEG parts are the published JPEGs byte for byte, curl and a
headless Chromium (over its DevTools protocol) play them, a stalled viewer slows nothing, and
`chromacast web` serves another process's publisher."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

import cv2
import numpy as np
import pytest

from browser import Browser, chromium_path
from conftest import free_port, make_config, run_cli, start_cli, write_video
from stream import protocol
from stream.config import ConfigError, parse_config
from stream.pipeline import Pipeline
from stream.subscribers import Subscriber


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


def live_source(video, sid: str, **extra) -> dict:
    return {"file": str(video), "id": sid, "realtime": True, "loop": True, **extra}


def mjpeg_parts(data: bytes) -> list[bytes]:
    """The JPEG parts of a multipart/x-mixed-replace body (boundary `chromacast`); a cut-off last part is left out."""
    parts, rest = [], data
    if len(rest) < 14:
        return parts
    assert rest.startswith(b"--chromacast\r\n"), rest[:40]
    rest = rest[len(b"--chromacast\r\n"):]
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        assert fields[b"Content-Type"] == b"image/jpeg"
        size = int(fields[b"Content-Length"])
        if len(rest) < size + len(b"\r\n--chromacast\r\n"):
            break
        parts.append(rest[:size])
        assert rest[size:size + 16] == b"\r\n--chromacast\r\n"
        rest = rest[size + 16:]
    return parts


def read_parts(url: str, count: int, timeout: float = 20) -> list[bytes]:
    """The first `count` parts of an MJPEG stream (fewer if `timeout` passes), read as they come."""
    response = urllib.request.urlopen(url, timeout=timeout)
    assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=chromacast"
    parts, deadline = [], time.monotonic() + timeout
    assert response.readline() == b"--chromacast\r\n"
    while len(parts) < count and time.monotonic() < deadline:
        fields = {}
        while (line := response.readline().rstrip(b"\r\n")):
            key, value = line.split(b": ", 1)
            fields[key] = value
        assert fields[b"Content-Type"] == b"image/jpeg"
        parts.append(response.read(int(fields[b"Content-Length"])))
        assert response.read(16) == b"\r\n--chromacast\r\n"
    response.close()
    return parts


def wait_listed(base: str, ids: set[str], timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(urllib.request.urlopen(base + "streams.json", timeout=5).read())
        if {s["id"] for s in listed} >= ids:
            return listed
        time.sleep(0.1)
    raise AssertionError(f"streams {ids} never listed at {base}")


def test_mjpeg_parts_are_the_published_jpegs(tmp_path, engine):
    video = write_video(tmp_path / "v.mp4", frames=30)
    config = make_config([live_source(video, "cam1")], web={"port": 0},
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    published: set[bytes] = set()
    stop = threading.Event()
    with running(config, engine) as pipeline:
        subscriber = Subscriber(pipeline.endpoint, "cam1")

        def collect() -> None:
            while not stop.is_set():
                message = subscriber.receive(0.1)
                if message is not None and message.jpeg is not None:
                    published.add(bytes(message.jpeg))

        collector = threading.Thread(target=collect)
        collector.start()
        base = pipeline.live.web.url
        listed = wait_listed(base, {"cam1"})
        parts = read_parts(base + "stream/cam1.mjpg", 12)
        time.sleep(0.3)
        stop.set()
        collector.join()
        subscriber.close()
    assert listed[0]["width"] == 160 and listed[0]["height"] == 120 and listed[0]["source_fps"] == 24
    assert len(parts) == 12
    assert sum(p in published for p in parts) >= 10  # the first parts may precede the subscription
    assert all(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3) for p in parts)


def test_curl_reads_valid_jpeg_parts_without_a_publisher(tmp_path, engine):
    video = write_video(tmp_path / "v.mp4", frames=30)
    config = make_config([live_source(video, "solo")], web={"port": 0})
    with running(config, engine) as pipeline:
        base = pipeline.live.web.url
        wait_listed(base, {"solo"})
        body = subprocess.run(["curl", "-s", "--max-time", "2", base + "stream/solo.mjpg"],
                              capture_output=True, timeout=10).stdout
        snapshot = urllib.request.urlopen(base + "stream/solo.jpg", timeout=5).read()
        page = urllib.request.urlopen(base, timeout=5).read().decode()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "stream/nope.mjpg", timeout=5)
    parts = mjpeg_parts(body)
    assert len(parts) >= 20  # 24 fps for 2 s
    for part in parts + [snapshot]:
        assert cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    assert "streams.json" in page and "<img" in page


def noisy_video(path, frames: int = 25, width: int = 480, height: int = 360, fps: int = 25):
    """Grey noise: JPEGs of a few hundred KB, so a viewer that does not read fills its socket at once."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width), np.uint8), format="gray")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_stalled_viewer_never_slows_the_pipeline(tmp_path, engine):
    video = noisy_video(tmp_path / "big.mp4")
    config = make_config([live_source(video, "big")], web={"port": 0, "send_timeout_s": 1})
    with running(config, engine) as pipeline:
        base = pipeline.live.web.url
        wait_listed(base, {"big"})
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", pipeline.live.web.port))
        stalled.sendall(b"GET /stream/big.mjpg HTTP/1.0\r\n\r\n")  # and never read
        stats = pipeline.stats.stream("big")
        before, started = stats.frames_out, time.monotonic()
        parts = read_parts(base + "stream/big.mjpg", 60, timeout=4)
        seconds = time.monotonic() - started
        rate = (stats.frames_out - before) / seconds
        hub = pipeline.live.web.hub
        view_dropped = hub.views["big"].dropped
        deadline = time.monotonic() + 20
        while hub.viewers and time.monotonic() < deadline:  # the stalled one is dropped after its timeout
            time.sleep(0.2)
        viewers_left = hub.viewers
        stalled.close()
    # the pipeline kept going: a viewer that blocked it would stop frames_out and drop nearly every
    # frame (the limits leave room for a loaded 2-core machine, where drops come from the CPU)
    assert stats.dropped <= 0.3 * stats.frames_in and rate > 8, (stats.dropped, stats.frames_in, rate)
    assert len(parts) >= 50  # the other viewer got (almost) every frame meanwhile
    assert view_dropped > 0  # the stalled viewer's mailbox kept only the newest frame
    assert viewers_left == 0


@pytest.mark.skipif(chromium_path() is None, reason="chromium not installed (Debian: apt-get install chromium)")
def test_headless_chromium_lists_the_streams_and_plays_them(tmp_path, engine):
    video = write_video(tmp_path / "v.mp4", frames=48, width=192, height=144)
    config = make_config([live_source(video, "left"), live_source(video, "right", fps=12)], web={"port": 0})
    with running(config, engine) as pipeline:
        base = pipeline.live.web.url
        wait_listed(base, {"left", "right"})
        browser = Browser(tmp_path / "profile")
        try:
            browser.navigate(base)
            browser.wait_for("document.querySelectorAll('.stream').length == 2 && "
                             "[...document.querySelectorAll('.stream img')].every(i => i.naturalWidth == 192)")
            texts = browser.wait_for("[...document.querySelectorAll('.stream .info')].map(e => e.textContent)"
                                     ".filter(t => !t.includes(' 0.0 fps')).length == 2 && "
                                     "[...document.querySelectorAll('.stream .info')].map(e => e.textContent)")
            first = browser.screenshot()
            time.sleep(0.7)
            second = browser.screenshot()
        finally:
            browser.close()
    assert sorted(t.split(":")[0] for t in texts) == ["left", "right"]
    assert all("192x144" in t and "fps" in t and "latency" in t for t in texts), texts
    a, b = (cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) for png in (first, second))
    assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() > 0.1  # the video moved


def test_web_command_serves_another_process_publisher(tmp_path, engine):
    video = write_video(tmp_path / "v.mp4", frames=30)
    config = make_config([live_source(video, "remote")], publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    port = free_port()
    with running(config, engine) as pipeline:
        gateway = start_cli(["web", "--connect", pipeline.endpoint, "--port", str(port)])
        try:
            assert "serving" in gateway.stdout.readline()
            base = f"http://127.0.0.1:{port}/"
            listed = wait_listed(base, {"remote"})
            parts = read_parts(base + "stream/remote.mjpg", 5)
        finally:
            gateway.send_signal(signal.SIGINT)
            rc = gateway.wait(15)
            gateway.stdout.close()
            gateway.stderr.close()
    assert listed[0]["latency_ms"] is not None and len(parts) == 5 and rc == 0


def test_web_command_bad_input_is_one_error_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["web", "--port", str(port)], timeout=30)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"web: cannot listen on 127.0.0.1:{port}" in done.stderr
    done = run_cli(["web", "--host", "every host"], timeout=30)
    assert done.returncode == 2 and "--host: must be an IP address" in done.stderr, done.stderr
    done = run_cli(["web", "--stream", "bad/id"], timeout=30)
    assert done.returncode == 2 and "invalid stream id" in done.stderr


def test_web_config_is_checked():
    with pytest.raises(ConfigError, match=r"web\.port: Input should be greater than or equal to 0"):
        parse_config("sources: [{webcam: 0}]\nweb: {port: -1}\n", "x.yaml")
    assert parse_config("sources: [{webcam: 0}]\nweb: true\n").web.host == "127.0.0.1"
