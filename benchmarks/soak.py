"""Soak benchmark: a live stream for N minutes with a stalled subscriber and a camera that
restarts every minute, optionally next to a camera that is down (`--down-camera`) and under
a subscription flood (`--flood N`: a local process connects every --flood-every seconds and
sends N random subscriptions); publisher memory and end-to-end latency over time.

    .venv/bin/python -m benchmarks.soak                  # 10 minutes
    .venv/bin/python -m benchmarks.soak --minutes 2      # a quick check

The camera is the RTSP test server (tests/rtsp/server.py, needs GStreamer's RTSP server for
the system python3); it is killed and started again every --restart-every seconds. Without
GStreamer the bundled sample clip is played at real time in a loop instead, with no
restarts (the JSON says so). `chromacast run` is a real process publishing on a free
loopback port; a second process subscribes and never reads; this process subscribes and
measures latency (receive time minus the frame header's capture stamp) and frame rate.
Writes benchmarks/results/soak-<date>.json and .png (machine, cores, date included).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
import zmq

from stream import protocol

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RTSP_SERVER = REPO / "tests" / "rtsp" / "server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # GStreamer's gi bindings come with Debian's python
SAMPLE_CLIP = REPO / "stream" / "samples" / "sample.mp4"
STALLED_SUBSCRIBER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 1)       # a client that stops reading: its buffers fill at once
sock.setsockopt(zmq.RCVBUF, 4096)
sock.subscribe(b"")
sock.connect(sys.argv[1])
print("connected", flush=True)
while True:
    time.sleep(3600)
"""


SUBSCRIPTION_FLOOD = """
import random, sys, time, zmq
url, count, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(0)
context = zmq.Context()
while True:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(url)
    for _ in range(count):
        sock.setsockopt(zmq.SUBSCRIBE, rng.randbytes(12))
    print("flooded", flush=True)
    time.sleep(min(5.0, every / 2))
    sock.close(0)
    time.sleep(every / 2)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtsp_available() -> bool:
    probe = ('import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0");'
             'from gi.repository import Gst; Gst.init(None);'
             'raise SystemExit(Gst.ElementFactory.find("x264enc") is None)')
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class RtspCamera:
    """The RTSP test server as a process that can be killed and started again on one port."""

    def __init__(self, size: str, fps: int) -> None:
        self.port, self.size, self.fps = free_port(), size, fps
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--size", self.size,
             "--fps", str(self.fps)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()  # "READY rtsp://..." once it listens
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"RTSP test server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()  # a camera that dies, not one that says goodbye
            self.process.wait(timeout=10)
        self.process = None


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the pipeline may use subprocesses)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


class LatencyProbe(threading.Thread):
    """A subscriber that reads everything and notes (receive time, seq, latency, reset)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="latency-probe", daemon=True)
        self.url = url
        self.records: list[tuple[float, int, float, bool]] = []
        self.malformed = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        with zmq.Context() as context:
            sock = context.socket(zmq.SUB)
            sock.linger = 0
            sock.subscribe(b"")
            sock.connect(self.url)
            while not self.stop_event.is_set():
                if not sock.poll(200):
                    continue
                data = sock.recv()
                now_ns = time.time_ns()
                try:
                    message = protocol.decode(data)
                except protocol.ProtocolError:
                    self.malformed += 1
                    continue
                if message.header is not None:
                    h = message.header
                    self.records.append((time.monotonic(), h.seq, (now_ns - h.capture_ns) / 1e6,
                                         bool(h.reset)))
            sock.close()


def pipeline_config(source: dict, bind: str, short_side: int, down_camera: bool = False) -> dict:
    reconnect = {"initial_delay_s": 0.5, "max_delay_s": 2.0, "give_up_after_s": None,
                 "open_timeout_s": 5.0, "read_timeout_s": 2.0}
    sources = [{"id": "soak", **source, "reconnect": reconnect}]
    if down_camera:  # nobody answers on this port: it must not slow the healthy stream
        sources.append({"id": "down", "rtsp": f"rtsp://127.0.0.1:{free_port()}/none", "reconnect": reconnect})
    return {
        "sources": sources,
        "engine": {"short_side": short_side},
        "publish": {"bind": bind},
        "record": None,
        "stats": {"interval_s": 60},
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(mem_kib / 2**20, 1), "os": platform.platform(),
            "python": platform.python_version()}


def windows(records: list, samples: list, t0: float) -> list[dict]:
    """Per-second rows: memory, frames received, latency p50/p99."""
    rows, i = [], 0
    recs = sorted(records)
    for t_sample, rss in samples:
        start = t_sample - 1.0
        while i < len(recs) and recs[i][0] < start:
            i += 1
        window = [r[2] for r in recs[i:] if r[0] < t_sample]
        rows.append({"t_s": round(t_sample - t0, 2), "rss_mib": round(rss / 2**20, 1),
                     "frames": len(window),
                     "latency_p50_ms": round(float(np.percentile(window, 50)), 1) if window else None,
                     "latency_p99_ms": round(float(np.percentile(window, 99)), 1) if window else None})
    return rows


def recovery_times(records: list, restarts: list[float]) -> list[float | None]:
    """Seconds from each camera kill to the first frame received after the camera came back."""
    out = []
    for t_kill, t_up in restarts:
        later = [r[0] for r in records if r[0] > t_up]
        out.append(round(min(later) - t_kill, 2) if later else None)
    return out


def plot(rows: list[dict], restarts: list[float], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    rss = [r["rss_mib"] for r in rows]
    axes[0].plot(t, rss, color="tab:blue")
    axes[0].set_ylabel("publisher RSS (MiB)")
    axes[0].set_ylim(0, max(rss, default=1) * 1.25)  # from zero: growth shows at its true scale
    for key, label, colour in (("latency_p50_ms", "p50", "tab:green"), ("latency_p99_ms", "p99", "tab:red")):
        axes[1].plot(t, [r[key] if r[key] is not None else np.nan for r in rows], label=label, color=colour)
    axes[1].set_ylabel("latency per second (ms)")
    axes[1].set_yscale("log")
    axes[1].legend(loc="upper right")
    axes[2].plot(t, [r["frames"] for r in rows], color="tab:purple")
    axes[2].set_ylabel("frames received / s")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.grid(alpha=0.3)
        for i, x in enumerate(restarts):
            ax.axvline(x / 60, color="grey", linestyle="--", linewidth=0.8,
                       label="camera restart" if (ax is axes[0] and i == 0) else None)
    if restarts:
        axes[0].legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak length after the first frame")
    p.add_argument("--restart-every", type=float, default=60.0, metavar="S", help="camera restart period")
    p.add_argument("--down", type=float, default=3.0, metavar="S", help="how long the camera stays away")
    p.add_argument("--source", choices=("auto", "rtsp", "file"), default="auto")
    p.add_argument("--size", default="320x240", help="RTSP camera frame size")
    p.add_argument("--fps", type=int, default=15, help="RTSP camera frame rate")
    p.add_argument("--short-side", type=int, default=160, help="network input short side")
    p.add_argument("--startup-timeout", type=float, default=300.0, metavar="S")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--down-camera", action="store_true", help="add an RTSP source that never answers")
    p.add_argument("--flood", type=int, default=0, metavar="N", help="subscriptions per flood (0: none)")
    p.add_argument("--flood-every", type=float, default=60.0, metavar="S", help="seconds between floods")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_rtsp = args.source == "rtsp" or (args.source == "auto" and rtsp_available())
    if args.source == "rtsp" and not rtsp_available():
        print("soak: GStreamer's RTSP server is not usable (run tests/rtsp/install_deps.sh)", file=sys.stderr)
        return 2
    bind = f"tcp://127.0.0.1:{free_port()}"
    work = Path(tempfile.mkdtemp(prefix="chromacast-soak-"))
    camera = RtspCamera(args.size, args.fps) if use_rtsp else None
    source = {"rtsp": camera.url} if camera else {"file": str(SAMPLE_CLIP), "realtime": True, "loop": True}
    config_path = work / "soak.yaml"
    config_path.write_text(yaml.safe_dump(pipeline_config(source, bind, args.short_side, args.down_camera)))
    log_path = work / "pipeline.log"
    processes: list[subprocess.Popen] = []
    probe = LatencyProbe(bind)
    samples: list[tuple[float, int]] = []
    restarts: list[tuple[float, float]] = []
    started = dt.datetime.now().astimezone()
    load_start = os.getloadavg()
    try:
        if camera:
            camera.start()
        with open(log_path, "w") as log_file:
            pipeline = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "--config", str(config_path)],
                                        cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        processes.append(pipeline)
        stalled = subprocess.Popen([sys.executable, "-c", STALLED_SUBSCRIBER, bind], stdout=subprocess.PIPE, text=True)
        processes.append(stalled)
        stalled.stdout.readline()
        if args.flood:
            processes.append(subprocess.Popen([sys.executable, "-c", SUBSCRIPTION_FLOOD, bind, str(args.flood),
                                               str(args.flood_every)], stdout=subprocess.DEVNULL))
        probe.start()
        t_launch = time.monotonic()
        while not probe.records:
            if pipeline.poll() is not None or time.monotonic() - t_launch > args.startup_timeout:
                print(f"soak: no frame from the pipeline (log: {log_path})", file=sys.stderr)
                print(log_path.read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        t0 = time.monotonic()
        print(f"soak: first frame after {t0 - t_launch:.1f} s; running {args.minutes:g} min "
              f"({'RTSP camera restarting every %gs' % args.restart_every if camera else 'looping file'})",
              flush=True)
        end, next_restart, next_sample = t0 + args.minutes * 60, t0 + args.restart_every, t0 + 1.0
        t_kill = None  # set while the camera is away
        while time.monotonic() < end and pipeline.poll() is None:
            now = time.monotonic()
            if camera and t_kill is None and now >= next_restart and now + args.down < end:
                camera.stop()
                t_kill = time.monotonic()
            elif t_kill is not None and now >= t_kill + args.down:
                camera.start()
                restarts.append((t_kill, time.monotonic()))
                print(f"soak: camera killed at {t_kill - t0:.0f} s and back {args.down:g} s later", flush=True)
                t_kill, next_restart = None, next_restart + args.restart_every
            if now >= next_sample:
                samples.append((now, tree_rss_bytes(pipeline.pid)))
                next_sample += 1.0
            time.sleep(0.05)
        alive_at_end = pipeline.poll() is None
        pipeline.send_signal(signal.SIGINT)
        try:
            exit_code = pipeline.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pipeline.kill()
            exit_code = "killed after 120 s without exiting"
    finally:
        probe.stop_event.set()
        if camera:
            camera.stop()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    probe.join(timeout=5)

    records = probe.records
    rows = windows(records, samples, t0)
    latencies = np.array([r[2] for r in records if r[0] >= t0]) if records else np.array([0.0])
    rss = [r["rss_mib"] for r in rows]
    minute = min(60, max(1, len(rss) // 4))
    result = {
        "benchmark": "soak", "date": started.isoformat(timespec="seconds"), "machine": machine(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "setup": {"minutes": args.minutes, "source": "rtsp" if camera else "file (realtime, loop)",
                  "size": args.size if camera else "sample clip", "fps": args.fps if camera else "clip fps",
                  "short_side": args.short_side, "restart_every_s": args.restart_every if camera else None,
                  "camera_down_s": args.down if camera else None, "stalled_subscriber": True,
                  "down_camera": args.down_camera,
                  "subscription_flood": {"subscriptions": args.flood, "every_s": args.flood_every}
                  if args.flood else None},
        "summary": {
            "pipeline_alive_at_end": alive_at_end, "pipeline_exit_code": exit_code,
            "frames_received": int(sum(r["frames"] for r in rows)),
            "mean_fps_received": round(sum(r["frames"] for r in rows) / max(1, len(rows)), 2),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "latency_max_ms": round(float(latencies.max()), 1),
            "rss_window_s": minute,  # medians over the first and the last this many seconds
            "rss_start_median_mib": round(float(np.median(rss[:minute])), 1) if rss else None,
            "rss_end_median_mib": round(float(np.median(rss[-minute:])), 1) if rss else None,
            "rss_max_mib": max(rss) if rss else None,
            "camera_restarts": len(restarts),
            "seconds_to_first_frame_after_restart": recovery_times(records, restarts),
            "frames_with_state_reset": int(sum(1 for r in records if r[3])),  # first frame + one per reconnect
            "malformed_messages": probe.malformed,
        },
        "pipeline_log_tail": log_path.read_text().splitlines()[-12:],
        "per_second": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"soak-{started.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    plot(rows, [t_kill - t0 for t_kill, _ in restarts],
         f"chromacast soak: {result['setup']['source']}, stalled subscriber, "
         f"{len(restarts)} camera restart{'' if len(restarts) == 1 else 's'}\n"
         f"{m['cpu']} ({m['cores']} cores), {result['date']}", stem.with_suffix(".png"))
    s = result["summary"]
    print(f"soak: {s['frames_received']} frames, {s['mean_fps_received']} fps, latency p50 {s['latency_p50_ms']} "
          f"ms p99 {s['latency_p99_ms']} ms, RSS {s['rss_start_median_mib']} -> "
          f"{s['rss_end_median_mib']} MiB (max {s['rss_max_mib']}), restarts {s['camera_restarts']}, "
          f"recovery {s['seconds_to_first_frame_after_restart']} s")
    print(f"soak: wrote {stem}.json and {stem}.png")
    return 0 if alive_at_end else 1


if __name__ == "__main__":
    sys.exit(main())
