"""What a new user runs into: one convention across subcommands, inputs and outputs checked before
any work, subscribers that say what they see, results that say where they went. Real processes,
real sockets on loopback, real files."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli_env, free_port, run_cli, write_video


def one_error_line(result: subprocess.CompletedProcess, command: str, text: str) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"chromacast {command}: error: ") and text in lines[0], lines[0]
    return lines[0]


# --- 2, 6: tracebacks, --version, bare chromacast -------------------------------------------

def test_help_into_a_closed_pipe_is_quiet():
    env = {**cli_env(), "PYTHONUNBUFFERED": "1"}  # a line at a time, as `chromacast -h | head -2` sees it
    process = subprocess.Popen([sys.executable, "-m", "stream.cli", "-h"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader has gone
    err = process.stderr.read()
    process.wait(30)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


def test_version_and_bare_command():
    version = run_cli(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("chromacast 0.")
    bare = run_cli([])
    assert bare.returncode == 2 and "usage: chromacast COMMAND" in bare.stderr and "give a command" in bare.stderr


# --- 3: outputs checked before any frame is read ------------------------------------------------

def test_run_refuses_an_unwritable_record_path_before_starting(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=10, width=96, height=64)
    started = time.monotonic()
    result = run_cli(["run", "--source", str(clip), "--no-publish", "--record", "/proc/nowhere/{stream}.mp4"],
                     cwd=tmp_path)
    assert result.returncode == 2
    one_error_line(result, "run", "record.path: cannot write /proc/nowhere/clip.mp4")
    assert "frames in" not in result.stdout  # no summary: nothing ran
    assert time.monotonic() - started < 30


# --- 5: unknown URL schemes ----------------------------------------------------------------------

@pytest.mark.parametrize("url", ["rtps://camera/door", "http://camera/stream.mjpg"])
def test_an_unknown_url_scheme_is_named_not_taken_as_a_file(tmp_path, url):
    result = run_cli(["run", "--source", url, "--no-publish"], cwd=tmp_path)
    assert result.returncode == 2
    one_error_line(result, "run", f"--source {url}: {url.split(':')[0]}:// is not supported; give a webcam index, "
                                  "an rtsp:// or rtsps:// URL")


# --- 9: number checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("command, option, value", [
    ("run", "--max-frames", "-1"), ("run", "--max-frames", "0"), ("run", "--duration", "0"),
    ("run", "--threads", "0"), ("record", "--frames", "-5"), ("record", "--timeout", "-1"),
    ("view", "--frames", "0"),
])
def test_counts_and_durations_must_be_positive(tmp_path, command, option, value):
    extra = {"run": ["--source", "x.mp4"], "record": ["--out", "x.mp4"], "view": []}[command]
    result = run_cli([command, *extra, option, value], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {option}: {value} must be" in result.stderr


# --- 2, 8, 15, 16: colorize -------------------------------------------------------------------------

def colorize(*args) -> subprocess.CompletedProcess:
    return run_cli(["colorize", *map(str, args), "--short-side", "64", "--stabilise", "0"], timeout=300)


def test_colorize_bounds_the_network_size_and_leaves_nothing(tmp_path):
    clip = write_video(tmp_path / "in.mp4", frames=4, width=64, height=48)
    result = run_cli(["colorize", str(clip), str(tmp_path / "out.mp4"), "--short-side", "100000"])
    assert result.returncode == 2
    one_error_line(result, "colorize", "--short-side 100000 is out of range 32..2048")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_colorize_never_overwrites_without_being_asked(tmp_path):
    clip = write_video(tmp_path / "in.mp4", frames=4, width=64, height=48)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    refused = colorize(clip, out)
    assert refused.returncode == 2 and out.read_bytes() == b"precious"
    one_error_line(refused, "colorize", f"output {out} already exists; add --overwrite to replace it")
    replaced = colorize(clip, out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert out.read_bytes() != b"precious"


def test_a_folder_input_never_makes_a_folder_named_like_a_file(tmp_path):
    (tmp_path / "films").mkdir()
    write_video(tmp_path / "films" / "a.mp4", frames=4, width=64, height=48)
    result = colorize(tmp_path / "films", tmp_path / "single.mp4")
    assert result.returncode == 2
    one_error_line(result, "colorize", "must be a folder for a folder input")
    assert not (tmp_path / "single.mp4").exists()


def test_colorize_says_where_everything_went_and_prints_lines_not_bars_into_a_pipe(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "a.mp4", frames=30, width=64, height=48)
    photo = np.zeros((48, 64, 3), np.uint8)
    photo[:, :, 2] = 200  # a red photo: it already had colour
    cv2.imwrite(str(tmp_path / "in" / "b.png"), photo)
    result = colorize(tmp_path / "in", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # no progress bar redraws in a pipe
    assert f"2 files colorized into {tmp_path / 'out'}" in result.stderr
    assert "the input already had colour" in result.stderr
    clip = write_video(tmp_path / "c.mp4", frames=4, width=64, height=48)
    compared = colorize(clip, tmp_path / "c-out.mp4", "--compare", tmp_path / "side.mp4")
    assert f"side by side: {tmp_path / 'side.mp4'}" in compared.stderr
    assert "1 shot;" in compared.stderr and "4 frames" in compared.stderr


# --- 4: subscribers say what they see ------------------------------------------------------------

class Streams:
    """A PUB socket on loopback sending small frames of the given streams until closed."""

    def __init__(self, *ids: str, frames_each: int | None = None):
        import threading

        import numpy as np
        import zmq

        from stream import protocol
        from stream.frame import FrameHeader

        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.linger = 0
        self.url = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        jpeg = protocol.encode_image(np.full((48, 64, 3), 90, np.uint8))
        self.stop = threading.Event()

        def send() -> None:
            seq = 0
            while not self.stop.is_set():
                for stream in ids:
                    header = FrameHeader(stream=stream, seq=seq, capture_ns=time.time_ns(), width=64, height=48,
                                         fps=25.0, reset=False, stages={})
                    self.socket.send(protocol.encode_frame(header, jpeg))
                seq += 1
                time.sleep(0.02)

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.socket.close()
        self.context.term()


@pytest.fixture
def streams():
    made = []

    def make(*ids: str) -> Streams:
        made.append(Streams(*ids))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_record_of_a_stream_that_is_not_there_lists_the_ones_that_are(tmp_path, streams):
    pub = streams("door", "yard")
    result = run_cli(["record", "--connect", pub.url, "--stream", "nosuch", "--out", str(tmp_path / "x.mp4"),
                      "--timeout", "2", "-q"])
    assert result.returncode == 1 and "nothing written" in result.stdout
    one_error_line(result, "record", f"no frames of stream nosuch from {pub.url} within 2 s; "
                                     f"streams published at {pub.url}: door, yard")
    assert not list(tmp_path.iterdir())


def test_record_of_two_streams_needs_a_choice_or_stream_in_the_path(tmp_path, streams):
    pub = streams("door", "yard")
    refused = run_cli(["record", "--connect", pub.url, "--out", str(tmp_path / "x.mp4"), "--timeout", "10", "-q"])
    assert refused.returncode == 2
    one_error_line(refused, "record", "several streams are published (door, yard): give --stream ID, "
                                      "or put {stream} in --out")
    assert not list(tmp_path.iterdir())
    each = run_cli(["record", "--connect", pub.url, "--out", str(tmp_path / "{stream}.mp4"), "--frames", "5",
                    "--timeout", "10"])
    assert each.returncode == 0, each.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["door.mp4", "yard.mp4"]
    assert "wrote 5 frames to" in each.stdout


# --- 10: CurveZMQ says it is on, and counts whom it refuses ----------------------------------------

def test_secured_publisher_logs_curve_on_and_refused_subscribers(tmp_path):
    import signal

    import zmq

    from conftest import start_cli
    from stream.security import SecurityConfig, create_key_pair, subscriber_socket_setup
    from stream.subscribers import Subscriber
    from test_pipeline_cli import TEST_ENGINE, write_config

    server_pub, server_sec = create_key_pair(tmp_path / "server", "server")
    client_pub, _ = create_key_pair(tmp_path / "client", "viewer")
    _, stranger_sec = create_key_pair(tmp_path / "stranger", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / client_pub.name).write_bytes(client_pub.read_bytes())
    clip = write_video(tmp_path / "clip.mp4", frames=50, width=96, height=64)
    url = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f"""
        sources: [{{id: cam, file: {clip}, realtime: true, loop: true}}]
        {TEST_ENGINE}
        publish: {{bind: "{url}", security: {{server_secret_key: {server_sec}, allowed_clients_dir: {allowed}}}}}
        stats: {{interval_s: 0}}
        """)
    process = start_cli(["run", "--config", config, "--duration", "60"], cwd=tmp_path)
    try:
        setup = subscriber_socket_setup(SecurityConfig(client_secret_key=stranger_sec, server_public_key=server_pub))
        for _ in range(3):
            stranger = Subscriber(url, socket_setup=setup)
            assert stranger.receive(3.0) is None
            stranger.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert "CurveZMQ on: encrypted, only the 1 allowed key in" in err
    assert "CurveZMQ: refused a subscriber (" in err and "1 refused so far" in err


# --- 13: a camera that is down is one warning line, not one per attempt ---------------------------

def test_a_camera_that_stays_down_logs_one_line(tmp_path):
    from test_pipeline_cli import TEST_ENGINE, write_config

    clip = write_video(tmp_path / "clip.mp4", frames=50, width=96, height=64)
    config = write_config(tmp_path, f"""
        sources:
          - {{id: film, file: {clip}, realtime: true, loop: true}}
          - {{id: door, rtsp: "rtsp://127.0.0.1:{free_port()}/door", reconnect: {{initial_delay_s: 0.2, max_delay_s: 0.4}}}}
        {TEST_ENGINE}
        publish: false
        stats: {{interval_s: 0}}
        """)
    result = run_cli(["run", "--config", config, "--duration", "6"], cwd=tmp_path, timeout=120)
    door = [line for line in result.stderr.splitlines() if "door" in line and "not connected yet" not in line]
    assert len(door) == 1 and "retrying for up to 60 s" in door[0], door
    verbose = run_cli(["run", "--config", config, "--duration", "3", "-v"], cwd=tmp_path, timeout=120)
    assert "connect attempt 2 failed" in verbose.stderr


# --- 12: --source keeps the config's stream ids -----------------------------------------------------

def test_source_on_the_command_line_keeps_the_configs_stream_id():
    from stream import pipeline_cli

    args = pipeline_cli.build_parser().parse_args(["--config", str(ROOT / "configs" / "rtsp.yaml"),
                                                   "--source", "rtsp://127.0.0.1:9/other"])
    config = pipeline_cli.load(args)
    assert [(s.id, s.rtsp) for s in config.sources] == [("door", "rtsp://127.0.0.1:9/other")]
    readme = (ROOT / "README.md").read_text()
    assert "tests/rtsp/server.py --port 8554 --mount /stream" in readme
    assert "rtsp://127.0.0.1:8554/stream" in (ROOT / "configs" / "rtsp.yaml").read_text()


# --- 11: a config's relative paths are taken from its own folder ------------------------------------

def test_shipped_config_runs_from_any_folder(tmp_path):
    from stream.config import load_config

    config = load_config(ROOT / "configs" / "sample.yaml")
    assert config.sources[0].file == ROOT / "stream" / "samples" / "sample.mp4"
    assert config.record.path == str(ROOT / "out" / "{stream}.mp4")
    result = run_cli(["run", "--config", str(ROOT / "configs" / "sample.yaml"), "--no-publish", "--no-record",
                      "--max-frames", "3", "--short-side", "64", "-q"], cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "out 3" in result.stdout


def test_command_line_paths_stay_relative_to_the_current_folder(tmp_path):
    from stream import pipeline_cli

    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "c.yaml").write_text("sources: [{file: clip.mp4}]\nrecord: {path: \"rec/{stream}.mp4\"}\n")
    args = pipeline_cli.build_parser().parse_args(["--config", str(config_dir / "c.yaml"), "--record", "mine/{stream}.mp4"])
    config = pipeline_cli.load(args)
    assert config.sources[0].file == config_dir / "clip.mp4" and config.record.path == "mine/{stream}.mp4"


# --- 2, 14: bench checks where its results go before the run; one option name for the stabiliser ---

def test_bench_refuses_an_unwritable_json_path_before_running():
    started = time.monotonic()
    result = run_cli(["bench", "--seconds", "30", "--json", "/proc/nowhere/out.json"])
    assert result.returncode == 2 and time.monotonic() - started < 30
    one_error_line(result, "bench", "--json /proc/nowhere/out.json: folder /proc/nowhere does not exist")


def test_every_command_takes_quiet_verbose_and_the_same_stabiliser_option():
    from benchmarks.cli import build_parser as bench_parser
    from stream.offline import build_parser as colorize_parser
    from stream.pipeline_cli import build_parser as run_parser

    assert bench_parser().parse_args(["--stabilise", "0", "-q"]).stabiliser == 0
    assert run_parser().parse_args(["--stabilise", "0.5", "-v"]).stabilise == 0.5
    assert colorize_parser().parse_args(["a", "b", "--stabilise", "0", "-q"]).stabilise == 0
    for command in ("run", "view", "record", "colorize", "bench", "keys"):
        text = run_cli([command, "--help"]).stdout
        assert "-q, --quiet" in text and "-v, --verbose" in text, command


# --- 17: small ones ------------------------------------------------------------------------------------

def test_a_hints_file_with_two_errors_reports_the_first_and_counts_the_rest(tmp_path):
    from stream.hintsfile import HintsError, load_hints

    path = tmp_path / "h.yaml"
    path.write_text("hints:\n  - {frame: 0, points: [{x: 0.5, y: 0.5, colour: '#zzzzzz'}]}\n"
                    "  - {frame: 2, points: [{x: 0.5, y: 0.5, colr: '#ffffff'}]}\n")
    with pytest.raises(HintsError) as error:
        load_hints(path)
    assert "entry 1 (frame 0): points[0].colour" in str(error.value)
    assert str(error.value).endswith("(and 1 more problem)")


def test_a_refused_resume_says_the_old_and_new_values(tmp_path):
    from stream.workfolder import WorkFolder, WorkFolderError

    dst = tmp_path / "out.mp4"
    work = WorkFolder.open(dst, {"stabilise": 0.85, "threads": None}, resume=False)
    (work.path / "state-00000.npz").write_bytes(b"")  # one finished segment: worth resuming
    with pytest.raises(WorkFolderError, match=r"used a different stabilise \(0\.85, now 0\.5\); delete"):
        WorkFolder.open(dst, {"stabilise": 0.5, "threads": None}, resume=True)


from test_colorize import make_clip, tiny_model  # noqa: E402,F401 (tiny_model is a fixture)


def test_a_resumed_run_counts_the_shots_of_the_whole_film(tmp_path, tiny_model, capsys):
    from engines.backend import open_engine
    from stream import offline
    from stream.videojob import VideoJobOptions, colorize_video

    src = make_clip(tmp_path / "in.mp4", frames=12, cut_at=3, audio=None)
    common = [str(src), str(tmp_path / "out.mp4"), "--model", str(tiny_model), "--segment-frames", "4"]
    assert offline.main(common) == 0
    full = capsys.readouterr().err
    assert "2 shots" in full, full
    (tmp_path / "out.mp4").unlink()

    def stop_at_frame_9(done: int, total: int) -> None:
        if done == 9:
            raise KeyboardInterrupt

    engine = open_engine(tiny_model, "onnxruntime", threads=1)
    opts = VideoJobOptions(segment_frames=4, identity=offline.job_identity(tiny_model, None, None))
    with pytest.raises(KeyboardInterrupt):
        colorize_video(src, tmp_path / "out.mp4", engine, opts, stop_at_frame_9)
    engine.close()
    assert offline.main([*common, "--resume"]) == 0
    resumed = capsys.readouterr().err
    assert "resumed at frame 8" in resumed and "2 shots" in resumed, resumed


# --- 7: Ctrl-C twice on run never leaves a broken file under the final name -------------------------

def test_ctrl_c_twice_leaves_no_broken_recording(tmp_path):
    import signal

    from conftest import start_cli
    from test_pipeline_cli import TEST_ENGINE, wait_for_frames, write_config

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
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)  # the forced exit, at once
        process.wait(30)
    finally:
        process.kill()
    assert process.returncode == 130
    final = tmp_path / "rec" / "cam.mp4"
    if final.exists():  # only if it was closed before the second signal: then it is whole
        from conftest import read_video

        assert read_video(final)[0]
