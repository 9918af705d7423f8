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
