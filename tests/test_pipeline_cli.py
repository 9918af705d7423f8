"""The `chromacast run | record | view` commands as a user runs them: real processes, real
signals, real sockets on loopback; every call has a timeout so nothing can hang."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, cli_env, free_port, read_video, run_cli, start_cli, write_video
from stream.subscribers import Subscriber

TEST_ENGINE = "engine: {kind: onnxruntime, short_side: 64, threads: 1}"


def write_config(tmp_path, body: str) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_clear_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("args, pattern", [
    (["--source", "missing.mp4"], "video file not found: missing.mp4"),
    (["--source", "rtsp://127.0.0.1:{port}/cam"], "cannot open RTSP stream rtsp://127.0.0.1:\\d+/cam"),
    (["--source", "77"], "webcam 77"),
    (["--config", "missing.yaml"], "config file not found"),
])
def test_bad_input_gives_one_error_line(tmp_path, args, pattern):
    args = [a.format(port=free_port()) for a in args]
    result = run_cli(["run", *args, "--no-publish"], timeout=60, cwd=tmp_path)
    assert_one_clear_error(result, pattern)
    assert result.returncode == 2


@pytest.mark.parametrize("body, pattern", [
    ("sources: [{file: a.mp4, fsp: 30}]\n", r"sources\[0\]\.fsp: unknown key"),
    ("sources: [{file: a.mp4, fps: fast}]\n", r"sources\[0\]\.fps: Input should be a valid number"),
    ("sources: [{file: a.mp4}]\nengine: {short_side: [1]}\n", r"engine\.short_side: .*integer"),
    ("sources: [{file: a.mp4}]\npublish: {bind: 5555}\n", r"publish\.bind"),
    ("sources:\n  - file: a.mp4\n   bad: indent\n", r"invalid YAML at line 3"),
])
def test_bad_config_names_key_and_problem(tmp_path, body, pattern):
    result = run_cli(["run", "--config", write_config(tmp_path, body)], timeout=60, cwd=tmp_path)
    assert_one_clear_error(result, pattern)
    assert result.returncode == 2


def test_stabilise_option_overrides_the_config_and_is_checked(tmp_path):
    from stream import pipeline_cli

    webcam = str(ROOT / "configs" / "webcam.yaml")
    config = pipeline_cli.load(pipeline_cli.build_parser().parse_args(["--config", webcam, "--stabilise", "0"]))
    assert config.state.stabiliser.strength == 0
    assert config.state.stabiliser.tolerance == 10 and config.state.scene_cut == 0.2  # the rest of the file stays
    result = run_cli(["run", "--config", webcam, "--stabilise", "1.5", "--no-publish"], timeout=60, cwd=tmp_path)
    assert_one_clear_error(result, r"state\.stabiliser\.strength: Input should be less than 1")


def test_run_prints_summary_and_records(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=20, width=128, height=96, fps=20)
    config = write_config(tmp_path, f"""
        sources: [{{id: clip, file: {clip}}}]
        {TEST_ENGINE}
        publish: {{bind: "tcp://127.0.0.1:{free_port()}"}}
        record: {{path: "{tmp_path}/{{stream}}-out.mp4"}}
        stats: {{interval_s: 0}}
        """)
    result = run_cli(["run", "--config", config], timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"frames in 20, out 20, dropped 0;.*fps; latency p50 [\d.]+ ms, p99 [\d.]+ ms", result.stdout)
    frames, fps = read_video(tmp_path / "clip-out.mp4")
    assert len(frames) == 20 and fps == 20 and frames[0].shape == (96, 128, 3)


def start_run(config: str, cwd) -> subprocess.Popen:
    return start_cli(["run", "--config", config], cwd=cwd)


def wait_for_frames(url: str, count: int, timeout_s: float = 60) -> None:
    subscriber = Subscriber(url)
    try:
        got = 0
        deadline = time.monotonic() + timeout_s
        while got < count:
            assert time.monotonic() < deadline, "no frames from the pipeline"
            message = subscriber.receive(1.0)
            got += message is not None and message.header is not None
    finally:
        subscriber.close()


def test_sigint_during_recording_leaves_valid_mp4(tmp_path):
    clip = write_video(tmp_path / "long.mp4", frames=400, width=128, height=96, fps=25)
    url = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f"""
        sources: [{{id: cam, file: {clip}, realtime: true}}]
        {TEST_ENGINE}
        publish: {{bind: "{url}"}}
        record: {{path: "{tmp_path}/{{stream}}.mp4"}}
        stats: {{interval_s: 0}}
        """)
    process = start_run(config, tmp_path)
    try:
        wait_for_frames(url, 10)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    frames_out = int(re.search(r"out (\d+),", out).group(1))
    assert 10 <= frames_out < 400
    frames, fps = read_video(tmp_path / "cam.mp4")
    assert len(frames) == frames_out and fps == 25


def test_second_signal_forces_exit(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from stream.signals import install_stop_handlers
        install_stop_handlers(lambda: print("draining", flush=True))
        print("ready", flush=True)
        time.sleep(60)
        """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "draining"  # the first signal asks for a drain
        process.send_signal(signal.SIGINT)
        process.wait(20)
    finally:
        process.kill()
    assert process.returncode == 130


def test_record_command_writes_published_stream(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=500, width=128, height=96, fps=50)
    url = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f"""
        sources: [{{id: cam, file: {clip}, realtime: true}}]
        {TEST_ENGINE}
        publish: {{bind: "{url}"}}
        stats: {{interval_s: 0}}
        """)
    out_file = tmp_path / "recorded.mp4"
    recorder = start_cli(["record", "--connect", url, "--stream", "cam", "--out", str(out_file),
                          "--frames", "15", "--timeout", "60"])
    pipeline = start_run(config, tmp_path)
    try:
        out, err = recorder.communicate(timeout=90)
    finally:
        recorder.kill()
        pipeline.send_signal(signal.SIGINT)
        pipeline.communicate(timeout=60)
    assert recorder.returncode == 0, err
    assert "wrote 15 frames" in out
    frames, fps = read_video(out_file)
    assert len(frames) == 15 and fps == 50 and frames[0].shape == (96, 128, 3)


def test_record_without_publisher_times_out_with_one_line(tmp_path):
    result = run_cli(["record", "--connect", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.mp4"),
                      "--timeout", "1"], timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in error_lines(result) if "error" in line] == [
        line for line in error_lines(result) if "no frames from" in line]
    assert not (tmp_path / "x.mp4").exists()


def test_view_without_display_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = run_cli(["view", "--connect", "tcp://127.0.0.1:5555"], timeout=60, env=env)
    assert_one_clear_error(result, "no display")
