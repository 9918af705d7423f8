"""Faults handled well: hostile messages, signals at any time, tiny frame rates, deep hints files,
key files, size changes. Real processes, real ZeroMQ sockets on loopback, real files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from conftest import ROOT, cli_env, free_port, run_cli, start_cli, write_video
from stream import protocol
from stream.frame import FrameHeader
from test_fuzz import JPEG, with_jpeg_size

# VmHWM, the peak RSS of this program only (getrusage's maxrss also counts the forking parent's)
RSS_PROBE = ("import re, sys; from stream.cli import main; rc = main(sys.argv[1:]); "
             "print('maxrss_kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), "
             "flush=True); sys.exit(rc)")


def header(**fields) -> FrameHeader:
    values = dict(stream="cam", seq=0, capture_ns=time.time_ns(), width=16, height=12, fps=25.0,
                  reset=False, stages={})
    values.update(fields)
    return FrameHeader(**values)


class Flood:
    """A PUB socket on loopback sending `messages` in a loop until stopped."""

    def __init__(self, messages: list[bytes], interval_s: float = 0.0):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.linger = 0
        self.url = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.messages, self.interval_s = messages, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            for message in self.messages:
                self.socket.send(message)
            time.sleep(self.interval_s or 0.0005)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.socket.close()
        self.context.term()


@pytest.fixture
def flood_factory():
    floods: list[Flood] = []

    def make(messages: list[bytes], interval_s: float = 0.0) -> Flood:
        floods.append(Flood(messages, interval_s))
        return floods[-1]

    yield make
    for flood in floods:
        flood.close()


def run_probe(args: list[str], timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RSS_PROBE, *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), cwd=cwd)


# --- data loss 5: a tiny message claiming a huge picture ------------------------------------

def test_a_tiny_message_claiming_a_huge_frame_is_refused_unread(tmp_path, flood_factory):
    bomb = protocol.encode_frame(header(width=30000, height=30000), with_jpeg_size(JPEG, 30000, 30000))
    assert len(bomb) < 1000
    flood = flood_factory([bomb], interval_s=0.05)
    started = time.monotonic()
    result = run_probe(["record", "--connect", flood.url, "--out", str(tmp_path / "x.mp4"), "--timeout", "3"])
    assert time.monotonic() - started < 30
    assert "over the limit of 67108864 pixels" in result.stderr, result.stderr
    rss_mb = int(result.stdout.split("maxrss_kb")[1]) / 1024
    assert rss_mb < 600, f"record grew to {rss_mb:.0f} MiB on a 629-byte message"
    assert result.returncode == 1 and "nothing written" in result.stdout


def test_the_pixel_cap_is_configurable():
    message = protocol.decode(protocol.encode_frame(header(), JPEG))
    assert protocol.decode_image(message).shape == (12, 16, 3)
    with pytest.raises(protocol.ProtocolError, match="16x12 is over the limit of 100 pixels"):
        protocol.decode_image(message, max_pixels=100)
    result = run_cli(["record", "--out", "x.mp4", "--max-pixels", "0"])
    assert result.returncode == 2 and "--max-pixels" in result.stderr


# --- faults 8: a flood of malformed messages must not hold off Ctrl-C or --timeout ------------

def test_timeout_holds_while_malformed_messages_keep_arriving(tmp_path, flood_factory):
    flood = flood_factory([b"cam\x00{not json}\x00", b"x" * 50])
    started = time.monotonic()
    result = run_cli(["record", "--connect", flood.url, "--out", str(tmp_path / "x.mp4"), "--timeout", "2"],
                     timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and "malformed" in result.stdout


def test_ctrl_c_stops_record_while_malformed_messages_keep_arriving(tmp_path, flood_factory):
    flood = flood_factory([b"cam\x00{not json}\x00"])
    process = start_cli(["record", "--connect", flood.url, "--out", str(tmp_path / "x.mp4")])
    try:
        assert "recording" in process.stderr.readline()  # its signal handlers are in place
        time.sleep(1)  # the flood is arriving
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = process.communicate(timeout=20)
        assert time.monotonic() - started < 5, "record ignored Ctrl-C during the flood"
    finally:
        process.kill()
    assert process.returncode == 130, err


def test_a_frame_with_a_broken_jpeg_is_malformed_not_received(flood_factory):
    from stream.subscribers import Subscriber

    broken = protocol.encode_frame(header(), JPEG[:200] + b"\x00" * 100)
    flood = flood_factory([broken], interval_s=0.01)
    subscriber = Subscriber(flood.url)
    try:
        frames = list(subscriber.frames(timeout_s=1.5))
    finally:
        subscriber.close()
    assert frames == []
    assert subscriber.malformed > 0 and subscriber.received == 0


# --- faults 10: frame rates too small to time ------------------------------------------------

def test_a_tiny_fps_is_malformed_not_a_crash(tmp_path, flood_factory):
    tiny = protocol.encode_frame(header(fps=1e-300), JPEG)
    with pytest.raises(protocol.ProtocolError, match="'fps'"):
        protocol.decode(tiny)
    flood = flood_factory([tiny], interval_s=0.02)
    result = run_cli(["record", "--connect", flood.url, "--out", str(tmp_path / "x.mp4"), "--timeout", "2"])
    assert "Traceback" not in result.stderr and result.returncode == 1
    assert "malformed" in result.stdout


def test_a_folder_source_at_a_tiny_fps_is_a_config_error():
    from stream.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"sources\[0\]\.fps"):
        parse_config("sources: [{folder: pics, fps: 0.0004}]")
    parse_config("sources: [{folder: pics, fps: 0.001}]")  # one frame every 1000 s is fine


def test_the_recorder_refuses_a_tiny_fps(tmp_path):
    from stream.sinks.base import SinkError
    from stream.sinks.recorder import Mp4Writer

    with pytest.raises(SinkError, match="at least 0.001 fps"):
        Mp4Writer(tmp_path / "x.mp4", 16, 12, 1e-300)
    writer = Mp4Writer(tmp_path / "slow.mp4", 16, 12, 0.001)
    writer.close()


# --- data loss 6: key files ---------------------------------------------------------------

def test_a_secret_key_is_never_readable_by_others_not_even_while_it_is_written(tmp_path):
    out = tmp_path / "keys"
    out.mkdir()
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:  # a racing reader: every file that appears, as soon as it appears
        while not done.is_set():
            for entry in os.scandir(out):
                try:
                    mode = entry.stat().st_mode & 0o777
                except FileNotFoundError:
                    continue
                if "secret" in entry.name:
                    seen[entry.name] = seen.get(entry.name, 0) | mode

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(10):
            result = subprocess.run([sys.executable, "-c", "import os, sys; os.umask(0); from stream.cli import main; "
                                     "sys.exit(main(sys.argv[1:]))", "keys", "--out", str(out), "--force"],
                                    capture_output=True, text=True, timeout=60, env=cli_env())
            assert result.returncode == 0, result.stderr
    finally:
        done.set()
        watcher.join()
    assert seen and all(mode & 0o077 == 0 for mode in seen.values()), {k: oct(v) for k, v in seen.items()}
    assert (out / "chromacast.key").stat().st_mode & 0o777 == 0o644  # the public key stays readable
    assert sorted(p.name for p in out.iterdir()) == ["chromacast.key", "chromacast.key_secret"]


@pytest.fixture
def key_pairs(tmp_path):
    from stream.security import create_key_pair

    server_pub, server_sec = create_key_pair(tmp_path / "server", "server")
    client_pub, client_sec = create_key_pair(tmp_path / "client", "viewer")
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o755)
    (allowed / client_pub.name).write_bytes(client_pub.read_bytes())
    (allowed / client_pub.name).chmod(0o644)
    return {"server_pub": server_pub, "server_sec": server_sec, "client_sec": client_sec, "allowed": allowed}


def test_open_key_permissions_are_refused_at_load_unless_overridden(key_pairs, monkeypatch):
    from stream.security import SecurityError, load_allowed_clients, load_secret_key_file

    load_secret_key_file(key_pairs["server_sec"])
    load_allowed_clients(key_pairs["allowed"])
    key_pairs["server_sec"].chmod(0o644)
    with pytest.raises(SecurityError, match=r"other users can read or change it \(mode 0644\); chmod 600"):
        load_secret_key_file(key_pairs["server_sec"])
    key_pairs["allowed"].chmod(0o777)
    with pytest.raises(SecurityError, match=r"allowed clients folder .*: other users can add keys to it"):
        load_allowed_clients(key_pairs["allowed"])
    key_pairs["allowed"].chmod(0o755)
    (key_pairs["allowed"] / "viewer.key").chmod(0o666)
    with pytest.raises(SecurityError, match=r"allowed client key .*viewer\.key: other users can change it"):
        load_allowed_clients(key_pairs["allowed"])
    monkeypatch.setenv("CHROMACAST_INSECURE_KEYS", "1")
    load_secret_key_file(key_pairs["server_sec"])  # the override: a warning, and it loads
    assert load_allowed_clients(key_pairs["allowed"])


def test_record_refuses_a_readable_client_key_in_one_line(key_pairs, tmp_path):
    key_pairs["client_sec"].chmod(0o640)
    args = ["record", "--connect", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.mp4"),
            "--server-key", str(key_pairs["server_pub"]), "--client-key", str(key_pairs["client_sec"]),
            "--timeout", "1"]
    refused = run_cli(args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chromacast record: error: client secret key file"), lines
    assert "chmod 600" in lines[0] and "--insecure-keys" in lines[0]
    allowed = run_cli(args + ["--insecure-keys"])
    assert "used anyway" in allowed.stderr and "no frames from" in allowed.stderr


# --- faults 9: a Ctrl-C while the inputs are being opened -----------------------------------

def test_ctrl_c_while_a_camera_is_being_opened_stops_run(tmp_path):
    import socket

    clip = write_video(tmp_path / "clip.mp4", frames=10, width=96, height=64)
    silent = socket.socket()  # accepts the RTSP connection and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"
    process = start_cli(["run", "--source", str(clip), "--source", url, "--no-publish", "--short-side", "64",
                         "--duration", "120"], cwd=tmp_path)
    try:
        silent.settimeout(60)
        connection, _ = silent.accept()  # run is inside the camera's open now
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = process.communicate(timeout=60)
        assert time.monotonic() - started < 15, "run went on after the Ctrl-C"
    finally:
        process.kill()
        silent.close()
    assert process.returncode == 130, err
    assert "Traceback" not in err


# --- faults 11: hints files nested very deep ---------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("deep.yaml", "a:\n" + "".join("  " * i + "- \n" for i in range(1, 3000))),
    ("flow.yaml", "[" * 3000 + "]" * 3000),
    ("deep.json", "[" * 100000 + "]" * 100000),
])
def test_deeply_nested_hints_file_is_one_line(tmp_path, name, text):
    hints = tmp_path / name
    hints.write_text(text)
    clip = write_video(tmp_path / "in.mp4", frames=4, width=64, height=48)
    result = run_cli(["colorize", str(clip), str(tmp_path / "out.mp4"), "--hints", str(hints)], timeout=120)
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"hints file {hints}" in lines[0], lines
    assert result.returncode == 2
    assert not (tmp_path / "out.mp4").exists()


# --- faults 13: small ones ----------------------------------------------------------------------

@pytest.mark.parametrize("stream_id", ["..", ".", ".hidden", "-x", "a/b", "../x"])
def test_stream_ids_that_are_not_safe_file_names_are_refused(stream_id):
    from stream.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"sources\[0\]\.id"):
        parse_config(f'sources: [{{id: "{stream_id}", file: a.mp4}}]\nrecord: {{path: "rec/{{stream}}/x.mp4"}}')
    assert not protocol.is_valid_stream_id(stream_id)
    with pytest.raises(protocol.ProtocolError, match="invalid stream id"):
        protocol.decode(stream_id.encode() + b'\x00{"v":1,"stream":"' + stream_id.encode() + b'","end":true}\x00')


def test_a_file_named_with_a_leading_dot_gets_a_safe_default_id():
    from stream.config import parse_config

    assert parse_config("sources: [{file: .secret.mp4}]").sources[0].id == "secret"


def test_duplicate_keys_in_a_config_are_an_error(tmp_path):
    from stream.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"line 4, column 5: key 'fps' is given twice"):
        parse_config("sources:\n  - file: a.mp4\n    fps: 10\n    fps: 20\n")


def test_duplicate_keys_in_hints_files_are_an_error(tmp_path):
    from stream.hintsfile import HintsError, load_hints

    (tmp_path / "h.yaml").write_text("hints: []\nhints: [{frame: 0, points: [{x: 0, y: 0, colour: '#ffffff'}]}]\n")
    with pytest.raises(HintsError, match="key 'hints' is given twice"):
        load_hints(tmp_path / "h.yaml")
    (tmp_path / "h.json").write_text('{"coordinates": "pixels", "coordinates": "relative", "hints": []}')
    with pytest.raises(HintsError, match="key 'coordinates' is given twice"):
        load_hints(tmp_path / "h.json")


def test_webcam_true_is_not_camera_one():
    from stream.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"sources\[0\]\.webcam"):
        parse_config("sources: [{webcam: true}]")
    assert parse_config("sources: [{webcam: 1}]").sources[0].webcam == 1


def test_security_doc_subscribes_to_one_stream_only():
    text = (ROOT / "docs" / "security.md").read_text()
    assert 'sub.subscribe(b"cam0\\x00")' in text


# --- faults 12: a frame size change starts a new file -----------------------------------------

def test_record_starts_a_new_file_when_the_frame_size_changes(tmp_path):
    import numpy as np

    from conftest import read_video

    context = zmq.Context()
    xpub = context.socket(zmq.XPUB)
    xpub.linger = 1000
    url = f"tcp://127.0.0.1:{xpub.bind_to_random_port('tcp://127.0.0.1')}"
    process = start_cli(["record", "--connect", url, "--stream", "cam", "--out", str(tmp_path / "x.mp4"),
                         "--timeout", "30"])
    try:
        assert xpub.poll(30000) and xpub.recv() == b"\x01cam\x00"  # the recorder has subscribed
        sizes = [(1, 1)] + [(64, 48)] * 5 + [(96, 64)] * 4
        for seq, (w, h) in enumerate(sizes):
            image = np.full((h, w, 3), 40 + seq * 10, np.uint8)
            xpub.send(protocol.encode_frame(header(seq=seq, width=w, height=h), protocol.encode_image(image)))
        xpub.send(protocol.encode_end("cam"))
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        xpub.close()
        context.term()
    assert process.returncode == 0, err
    found = {p.name: read_video(p)[0] for p in tmp_path.glob("*.mp4")}
    assert sorted(found) == ["x-2.mp4", "x-3.mp4", "x.mp4"], err
    assert [len(found[n]) for n in ("x.mp4", "x-2.mp4", "x-3.mp4")] == [1, 5, 4]
    assert found["x-2.mp4"][0].shape == (48, 64, 3) and found["x-3.mp4"][0].shape == (64, 96, 3)
    assert "wrote 1 frame to" in out and "5 frames to" in out


# --- faults 7: damaged films ---------------------------------------------------------------------

def h264_clip(path: Path, frames: int = 40, gop: int = 10, retime=None) -> Path:
    """A grey H.264 clip with a keyframe every `gop` frames; `retime(k, packet)` may alter timestamps."""
    import av

    from conftest import pattern_frame

    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    stream.codec_context.gop_size = gop
    packets = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern_frame(i, 96, 64), format="gray")
        frame.pts = i
        packets += stream.encode(frame)
    for k, packet in enumerate(packets + stream.encode(None)):
        if retime:
            retime(k, packet)
        container.mux(packet)
    container.close()
    return path


def colorize(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["colorize", str(src), str(dst), "--short-side", "64", "--stabilise", "0", *extra], timeout=300)


def test_colorize_replaces_undecodable_first_frames_and_keeps_count_and_timing(tmp_path):
    import av

    from conftest import read_video

    clip = h264_clip(tmp_path / "clip.mp4")
    with av.open(str(clip)) as container:
        first = [(p.pos, p.size) for p in container.demux(video=0) if p.size][:2]
    data = bytearray(clip.read_bytes())
    for pos, size in first:  # the first keyframe and the frame after it: garbage
        data[pos + 4:pos + size] = b"\x5a" * (size - 4)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    result = colorize(damaged, tmp_path / "out.mp4")
    assert result.returncode == 0, result.stderr
    assert "10 undecodable frames replaced" in result.stderr
    frames, fps = read_video(tmp_path / "out.mp4")
    assert len(frames) == 40 and fps == 25
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert abs(float(container.duration / 1e6) - 40 / 25) < 0.05


def test_colorize_repairs_timestamps_that_go_backwards(tmp_path):
    from conftest import read_video

    def jump_back(k, packet) -> None:  # matroska stores presentation times as given
        packet.dts = packet.dts - 10
        if k >= 15:
            packet.pts -= 5

    clip = h264_clip(tmp_path / "clip.mkv", frames=30, retime=jump_back)
    result = colorize(clip, tmp_path / "out.mp4")
    assert result.returncode == 0, result.stderr
    assert "retimed" in result.stderr
    frames, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == 30
    assert not list(tmp_path.glob(".*chromacast*"))


def test_a_failure_before_the_first_segment_leaves_nothing_that_blocks_the_next_run(tmp_path):
    clip = h264_clip(tmp_path / "clip.mp4", frames=12)
    from stream.workfolder import work_folder_for

    stale = work_folder_for(tmp_path / "out.mp4")  # what a run killed before its first segment leaves
    stale.mkdir()
    (stale / "job.json").write_text('{"complete": false}')
    result = colorize(clip, tmp_path / "out.mp4")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.mp4").exists() and not stale.exists()


def test_sigterm_before_the_first_segment_says_so_and_leaves_nothing(tmp_path):
    clip = write_video(tmp_path / "long.mp4", frames=600, width=320, height=240)
    process = start_cli(["colorize", str(clip), str(tmp_path / "out.mp4"), "--short-side", "64", "-q"])
    try:
        from stream.workfolder import work_folder_for

        deadline = time.monotonic() + 60
        while not work_folder_for(tmp_path / "out.mp4").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.strip().startswith("chromacast colorize: error: interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]
