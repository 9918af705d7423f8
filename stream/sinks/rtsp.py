"""RTSP out: every stream at rtsp://HOST:PORT/<stream id> (H.264, the stream's size and fps).

GStreamer's RTSP server has Python bindings only for Debian's /usr/bin/python3, not for the
virtualenv chromacast runs in, so the server is a helper process under that Python
(stream/sinks/rtsp_helper.py) fed the encoded messages (JPEG, as published) through a pipe.
The pipe is written by one thread behind a small drop-oldest queue: a slow encoder or a
stalled RTSP client costs frames on the RTSP side only and never slows the pipeline. If the
helper dies mid-run, one error line says so and the rest of the pipeline goes on.
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import struct
import subprocess
import threading
import time
from pathlib import Path

from stream import protocol
from stream.protocol import ProtocolError
from stream.queues import BoundedQueue, Overflow, QueueClosed
from stream.sinks.base import SinkError
from stream.sinks.live_config import RtspConfig, mount_problem

log = logging.getLogger("chromacast.rtsp")

HELPER = Path(__file__).with_name("rtsp_helper.py")
START_TIMEOUT_S = 30.0


def gst_python() -> str:
    """The Python with GStreamer's bindings (CHROMACAST_GST_PYTHON overrides Debian's)."""
    return os.environ.get("CHROMACAST_GST_PYTHON", "/usr/bin/python3")


class RtspOut:
    """The helper process and the thread that feeds it; a tap (stream/sinks/tap.py).
    Starts and listens in the constructor (SinkError when it cannot)."""

    name = "rtsp"

    def __init__(self, config: RtspConfig):
        python = gst_python()
        if not os.path.exists(python):
            raise SinkError(f"rtsp: {python} not found: the RTSP server needs Debian's python3 with "
                            "GStreamer (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0)")
        command = [python, str(HELPER), "--host", config.host, "--port", str(config.port),
                   "--key-interval", str(config.key_interval_s), "--bitrate", str(config.bitrate_kbps or 0)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)  # Ctrl-C goes to us only
        self.port = self._wait_ready(config)
        self.url = f"rtsp://{config.host}:{self.port}/"
        self.frames: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._viewers = 0
        self._warned: set[str] = set()
        self.queue: BoundedQueue = BoundedQueue(config.queue, Overflow.DROP_OLDEST, name="rtsp",
                                                on_drop=self._count_drop)
        self._writer = threading.Thread(target=self._write, name="rtsp-feed", daemon=True)
        self._reader = threading.Thread(target=self._read, name="rtsp-status", daemon=True)
        self._writer.start()
        self._reader.start()
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("RTSP on %s: anyone who reaches it can watch every stream", self.url)

    def _wait_ready(self, config: RtspConfig) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.process.stdout.readline().decode(errors="replace").strip()
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line:  # it exited
                break
        self._kill()
        text = self.process.stderr.read().decode(errors="replace").strip().splitlines()
        why = next((t.removeprefix("ERROR: ") for t in reversed(text) if t.startswith("ERROR: ")),
                   text[-1] if text else f"did not start within {START_TIMEOUT_S:g} s")
        raise SinkError(f"rtsp: {why}")

    def offer(self, message: bytes) -> None:
        try:
            decoded = protocol.decode(message)
        except ProtocolError:
            return
        problem = mount_problem(decoded.stream)
        if problem:
            if decoded.stream not in self._warned:
                self._warned.add(decoded.stream)
                log.warning("rtsp: %s; not served", problem)
            return
        if decoded.end is None:
            self.frames[decoded.stream] = self.frames.get(decoded.stream, 0) + 1
        try:
            # an end message must not be dropped, or the mount would outlive its stream
            self.queue.put((decoded.stream, message), force=decoded.end is not None)
        except QueueClosed:
            pass

    def _count_drop(self, item: tuple[str, bytes]) -> None:
        self.dropped[item[0]] = self.dropped.get(item[0], 0) + 1

    def _write(self) -> None:
        pipe = self.process.stdin
        try:
            while True:
                _, message = self.queue.get()
                pipe.write(struct.pack(">I", len(message)) + message)
                pipe.flush()
        except QueueClosed:
            pass
        except OSError:  # the helper died: the pipeline goes on without RTSP
            log.error("rtsp: the RTSP server process stopped (exit status %s); streams are no longer "
                      "served over RTSP", self.process.poll())
            self.queue.close()
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _read(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").split()
            if len(line) == 2 and line[0] == "VIEWERS":
                self._viewers = int(line[1])

    @property
    def viewers(self) -> int:
        return self._viewers

    def counts(self) -> dict[str, tuple[int, int]]:
        return {sid: (n, self.dropped.get(sid, 0)) for sid, n in list(self.frames.items())}

    def close(self) -> None:
        """Let the helper take what is queued, then end it (its clients see the end)."""
        self.queue.close()
        self._writer.join(5)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self._kill()
        self._reader.join(2)
        self.process.stdout.close()
        self.process.stderr.close()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def main(argv: list[str] | None = None) -> int:
    """`chromacast restream`: serve a publisher's streams over RTSP."""
    from stream.logs import error_line, setup_logging
    from stream.security import (SecurityError, add_subscriber_key_options, subscriber_security_from_args,
                                 subscriber_socket_setup)
    from stream.signals import install_stop_handlers
    from stream.sinks.tap import ZmqFeed
    from stream.sinks.web import _one_line
    from stream.subscribers import DEFAULT_URL

    parser = argparse.ArgumentParser(prog="chromacast restream", description="Serve published streams over "
                                     "RTSP at rtsp://HOST:PORT/<stream id> (H.264).")
    parser.add_argument("--connect", default=DEFAULT_URL, metavar="URL",
                        help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--rtsp-port", "--port", dest="port", type=int, default=8554,
                        help="RTSP port (default 8554; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--stream", metavar="ID", help="only this stream id")
    parser.add_argument("--key-interval", type=float, default=0.5, metavar="S",
                        help="seconds between key frames (a late client starts at the next one)")
    parser.add_argument("-q", "--quiet", action="store_true")
    add_subscriber_key_options(parser)
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    try:
        if args.stream and not protocol.is_valid_stream_id(args.stream):
            raise ValueError(f"invalid stream id {args.stream!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if args.stream and mount_problem(args.stream):
            raise ValueError(mount_problem(args.stream))
        config = RtspConfig(host=args.host, port=args.port, key_interval_s=args.key_interval)
        setup = subscriber_socket_setup(subscriber_security_from_args(args))
        server = RtspOut(config)
    except (ValueError, SecurityError, SinkError) as exc:
        error_line("restream", _one_line(exc))
        return 2
    try:
        feed = ZmqFeed(args.connect, [server], args.stream, setup)
    except ValueError as exc:
        server.close()
        error_line("restream", str(exc))
        return 2
    stop = threading.Event()
    install_stop_handlers(stop.set)
    feed.start()
    print(f"chromacast restream: serving {args.connect} at {server.url}<stream id>", flush=True)
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                error_line("restream", f"the RTSP server process stopped (exit status {server.process.returncode})")
                return 1
    finally:
        feed.stop()
        feed.join(2)
        server.close()
    return 0
