"""Data loss and denial of service: a run never records over its input or lets two streams share
one file, a recording is under its final name only when complete, a flood of subscriptions
cannot grow the publisher's memory, and a camera that is down does not slow the others.
Real processes, real files, real ZeroMQ sockets on loopback."""
from __future__ import annotations

import random
import re
import signal
import threading
import time

import pytest
import zmq

from conftest import free_port, read_video, run_cli, start_cli, write_video
from stream.batcher import Batcher
from stream.config import ConfigError, parse_config
from stream.frame import Frame, FrameHeader
from stream.queues import Overflow
from stream.subscribers import Subscriber
from test_pipeline_cli import TEST_ENGINE, assert_one_clear_error, wait_for_frames, write_config


def test_run_refuses_to_record_over_its_own_input(tmp_path):
    clip = write_video(tmp_path / "self.mp4", frames=30, width=96, height=64)
    before = clip.read_bytes()
    result = run_cli(["run", "--source", str(clip), "--no-publish", "--short-side", "64",
                      "--record", f"{tmp_path}/{{stream}}.mp4"], timeout=120, cwd=tmp_path)
    assert_one_clear_error(result, r"record\.path .* over the input file .*self\.mp4")
    assert clip.read_bytes() == before


def test_run_refuses_the_default_record_path_on_a_previous_recording(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    clip = write_video(out / "sample.mp4", frames=10, width=96, height=64)
    before = clip.read_bytes()
    result = run_cli(["run", "--source", "out/sample.mp4", "--no-publish", "--short-side", "64",
                      "--record", "out/{stream}.mp4"], timeout=120, cwd=tmp_path)
    assert_one_clear_error(result, r"over the input file")
    assert clip.read_bytes() == before


def test_several_sources_need_stream_in_the_record_path():
    text = """
        sources: [{id: a, file: a.mp4}, {id: b, file: b.mp4}]
        record: {path: same.mp4}
        """
    with pytest.raises(ConfigError, match=r"has no \{stream\}: with 2 sources"):
        parse_config(text)
    parse_config(text.replace("same.mp4", "\"rec/{stream}.mp4\""))  # one file each: accepted


def test_recording_is_under_its_final_name_only_when_complete(tmp_path):
    clip = write_video(tmp_path / "long.mp4", frames=400, width=128, height=96, fps=25)
    url = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f"""
        sources: [{{id: cam, file: {clip}, realtime: true}}]
        {TEST_ENGINE}
        publish: {{bind: "{url}"}}
        record: {{path: "{tmp_path}/rec/{{stream}}.mp4"}}
        stats: {{interval_s: 0}}
        """)
    process = start_cli(["run", "--config", config], cwd=tmp_path)
    try:
        wait_for_frames(url, 10)
        deadline = time.monotonic() + 20
        while not (tmp_path / "rec" / ".cam.partial.mp4").exists():
            assert time.monotonic() < deadline, "the recording never started"
            time.sleep(0.1)
        assert not (tmp_path / "rec" / "cam.mp4").exists()  # still recording: no file under the name
        process.send_signal(signal.SIGKILL)  # a forced exit
        process.wait(30)
    finally:
        process.kill()
    assert not (tmp_path / "rec" / "cam.mp4").exists()  # never a broken file under the final name


def test_stopped_recording_is_renamed_and_playable(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=12, width=96, height=64, fps=12)
    result = run_cli(["run", "--source", str(clip), "--no-publish", "--short-side", "64",
                      "--record", f"{tmp_path}/rec/{{stream}}-colour.mp4"], timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames, _ = read_video(tmp_path / "rec" / "clip-colour.mp4")
    assert len(frames) == 12
    assert [p.name for p in (tmp_path / "rec").iterdir()] == ["clip-colour.mp4"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


def test_subscription_flood_leaves_publisher_memory_flat(tmp_path):
    clip = write_video(tmp_path / "loop.mp4", frames=50, width=96, height=64, fps=25)
    url = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f"""
        sources: [{{id: cam, file: {clip}, realtime: true, loop: true}}]
        {TEST_ENGINE}
        publish: {{bind: "{url}"}}
        stats: {{interval_s: 0}}
        """)
    process = start_cli(["run", "--config", config, "--duration", "60"], cwd=tmp_path)
    context = zmq.Context()
    attacker = context.socket(zmq.SUB)
    try:
        wait_for_frames(url, 5)
        before = rss_mib(process.pid)
        attacker.setsockopt(zmq.SNDHWM, 0)
        attacker.connect(url)
        rng = random.Random(0)
        for _ in range(150_000):  # random bytes: ~3 KiB each in an unguarded publisher's trie
            attacker.setsockopt(zmq.SUBSCRIBE, rng.randbytes(12))
        time.sleep(4)
        wait_for_frames(url, 25)  # the publisher reads the flood while it keeps publishing
        during = rss_mib(process.pid)
        viewer = Subscriber(url, stream="cam")  # a real subscriber still gets its stream
        try:
            assert any(viewer.receive(2.0) for _ in range(10))
        finally:
            viewer.close()
    finally:
        attacker.close(0)
        context.term()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert "disconnected subscriber 127.0.0.1" in err and "more than 64 subscriptions" in err
    assert during - before < 60, f"publisher RSS grew {before:.0f} → {during:.0f} MiB"
    assert process.returncode == 130


def frame(stream: str, seq: int = 0) -> Frame:
    header = FrameHeader(stream=stream, seq=seq, capture_ns=time.time_ns(), width=8, height=8, fps=25.0)
    import numpy as np
    return Frame(header=header, image=np.zeros((8, 8, 3), np.uint8))


def test_batch_does_not_wait_for_a_stream_that_is_not_delivering():
    batcher = Batcher(lambda f: (8, 8), max_batch=8, max_wait_s=0.5)
    healthy = batcher.add_stream("file", 4, Overflow.BLOCK, 25.0)
    batcher.add_stream("down-camera", 2, Overflow.DROP_OLDEST, 25.0)  # never gives a frame
    for seq in range(3):
        healthy.put(frame("file", seq))
        started = time.monotonic()
        got = batcher.gather()
        assert time.monotonic() - started < 0.25
        assert [f.header.stream for g in got.groups for f in g] == ["file"]


def test_batch_still_waits_for_a_stream_that_is_delivering():
    batcher = Batcher(lambda f: (8, 8), max_batch=8, max_wait_s=0.5)
    a = batcher.add_stream("a", 4, Overflow.BLOCK, 25.0)
    b = batcher.add_stream("b", 4, Overflow.BLOCK, 25.0)
    a.put(frame("a"))
    b.put(frame("b"))
    batcher.gather()  # both have delivered now
    a.put(frame("a", 1))
    threading.Timer(0.05, lambda: b.put(frame("b", 1))).start()
    got = batcher.gather()
    assert sorted(f.header.stream for g in got.groups for f in g) == ["a", "b"]
