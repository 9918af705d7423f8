"""Shared fixtures: test videos written with PyAV, free loopback ports, the shipped engine,
pipeline configs, and the GStreamer RTSP server (tests/rtsp/server.py, Debian's python3)."""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream.config import PipelineConfig  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = ROOT / "tests" / "rtsp" / "server.py"
TEST_SHORT_SIDE = 64  # small network input: the tests check plumbing, not colour quality


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern_frame(i: int, width: int, height: int, colour: bool = False) -> np.ndarray:
    """A moving gradient with a bright box: every frame different, plenty of L structure."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 128, height, dtype=np.float32)[:, None]
    grey = ((x[None, :] + y + i * 7) % 256).astype(np.uint8)
    bx, by = (i * 5) % max(1, width - 20), (i * 3) % max(1, height - 20)
    grey[by:by + 20, bx:bx + 20] = 240
    if not colour:
        return grey
    bgr = np.dstack([grey, np.roll(grey, 17, axis=1), 255 - grey])
    return np.ascontiguousarray(bgr)


def write_video(path: Path, frames: int = 24, width: int = 160, height: int = 120, fps: float = 24,
                colour: bool = False) -> Path:
    """An H.264 mp4 (4:4:4 for odd sizes) of `frames` pattern frames."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                  options={"crf": "18", "preset": "ultrafast"})
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv444p" if (width % 2 or height % 2) else "yuv420p"
    for i in range(frames):
        image = pattern_frame(i, width, height, colour)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24" if colour else "gray")
        frame.pts = i
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames as BGR, and the average frame rate."""
    with av.open(str(path)) as container:
        rate = float(container.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return frames, rate


@pytest.fixture(scope="session")
def engine():
    """The shipped default model on ONNX Runtime, shared by the tests (loading takes a second)."""
    from engines.backend import open_engine

    eng = open_engine(None, "onnxruntime", threads=2)
    yield eng
    eng.close()


def make_config(sources: list[dict], **sections) -> PipelineConfig:
    """A pipeline config for tests: small network input, no progress lines, no default sinks."""
    data = {"sources": sources, "engine": {"kind": "onnxruntime", "short_side": TEST_SHORT_SIDE, "threads": 2},
            "publish": None, "stats": {"interval_s": 0}}
    for key, value in sections.items():
        data[key] = value
    return PipelineConfig.model_validate(data)


@pytest.fixture
def sample_video(tmp_path) -> Path:
    return write_video(tmp_path / "in.mp4")


def cli_env(env: dict | None = None) -> dict:
    """The environment for a `python -m stream.cli` subprocess: the repo importable from any cwd."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_cli(args: list[str], timeout: float = 60, cwd: Path = ROOT, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """`chromacast ARGS` in a subprocess, with a timeout so that nothing can hang."""
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env(env))


def start_cli(args: list[str], cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- RTSP server ------------------------------------------------------------------------------

def rtsp_unavailable_reason() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3 with gi)"
    probe = ('import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0"); '
             'from gi.repository import Gst, GstRtspServer; Gst.init(None); '
             'assert all(Gst.ElementFactory.find(e) for e in ("x264enc", "rtph264pay", "videotestsrc"))')
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if done.returncode != 0:
        return ("GStreamer RTSP server not installed (Debian: gir1.2-gst-rtsp-server-1.0 python3-gi "
                "gstreamer1.0-plugins-{base,good,ugly}; `make system-deps` installs them)")
    return None


class RtspServer:
    """tests/rtsp/server.py in a subprocess: start(), kill(), start() again on the same port."""

    def __init__(self, port: int, mount: str = "/test", size: str = "160x120", fps: int = 25):
        self.port, self.mount, self.size, self.fps = port, mount, size, fps
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20) -> "RtspServer":
        deadline = time.monotonic() + timeout
        while True:  # the port may still be held by a just-killed server for a moment
            self.process = subprocess.Popen(
                [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--mount", self.mount,
                 "--size", self.size, "--fps", str(self.fps)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.1, deadline - time.monotonic()))
            if ready and self.process.stdout.readline().startswith("READY"):
                return self
            self.kill()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process:
            for pipe in (self.process.stdout, self.process.stderr):
                pipe.close()
        self.process = None


@pytest.fixture(scope="session")
def rtsp_available():
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def rtsp_server(rtsp_available):
    server = RtspServer(free_port()).start()
    yield server
    server.kill()
