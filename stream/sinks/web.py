"""Browser viewer: a page listing the live streams and each stream as MJPEG.

    GET /                   the page: every live stream with its size, fps and latency, playing
    GET /streams.json       the same list as JSON
    GET /stream/<id>.mjpg   multipart/x-mixed-replace of the stream's JPEG frames (VLC, Home
                            Assistant and <img> tags take it too)
    GET /stream/<id>.jpg    the newest frame

The frames are chromacast's own JPEG payloads, sent as they are (never re-encoded). Each client
has a one-frame mailbox that a newer frame replaces (counted as a drop), served by its own
thread: a stalled client falls behind alone and is dropped after `send_timeout_s`; the pipeline
never waits for it. Binds to 127.0.0.1 unless the config says otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream import protocol
from stream.protocol import ProtocolError
from stream.sinks.base import SinkError
from stream.sinks.live_config import WebConfig

log = logging.getLogger("chromacast.web")

BOUNDARY = b"chromacast"
MAX_STREAMS = 256  # a publisher with more distinct ids than this is not followed past it
STALE_S = 5.0  # a stream without frames this long is left off the page


class _Client:
    """One MJPEG viewer's mailbox: the newest frame it has not sent yet."""

    __slots__ = ("jpeg", "wake", "ended")

    def __init__(self) -> None:
        self.jpeg: memoryview | None = None
        self.wake = threading.Event()
        self.ended = False


class _View:
    """What the hub knows of one stream."""

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.header: protocol.FrameHeader | None = None
        self.jpeg: memoryview | None = None
        self.arrivals: deque[float] = deque(maxlen=60)
        self.latencies_ms: deque[float] = deque(maxlen=60)
        self.clients: set[_Client] = set()
        self.frames = 0
        self.dropped = 0  # frames replaced in a client's mailbox before it took them
        self.ended = False

    def info(self) -> dict:
        h, now = self.header, time.monotonic()
        span = self.arrivals[-1] - self.arrivals[0] if len(self.arrivals) > 1 else 0.0
        fps = (len(self.arrivals) - 1) / span if span > 0 and now - self.arrivals[-1] < 2 else 0.0
        return {"id": self.id, "width": h.width, "height": h.height, "source_fps": h.fps,
                "fps": round(fps, 1), "viewers": len(self.clients), "frames": self.frames,
                "latency_ms": round(statistics.median(self.latencies_ms), 1) if self.latencies_ms else None,
                "mjpeg": f"/stream/{self.id}.mjpg"}


class WebHub:
    """The streams' newest frames and their viewers; a tap (stream/sinks/tap.py)."""

    name = "web"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.views: dict[str, _View] = {}
        self.malformed = 0
        self.closing = False

    def offer(self, message: bytes) -> None:
        try:
            decoded = protocol.decode(message)
        except ProtocolError:
            self.malformed += 1
            return
        with self.lock:
            view = self.views.get(decoded.stream)
            if view is None:
                if len(self.views) >= MAX_STREAMS:
                    return
                view = self.views[decoded.stream] = _View(decoded.stream)
            if decoded.end is not None:
                view.ended = True
                for client in view.clients:
                    client.ended = True
                    client.wake.set()
                return
            view.ended = False
            view.header, view.jpeg = decoded.header, decoded.jpeg
            view.frames += 1
            view.arrivals.append(time.monotonic())
            view.latencies_ms.append((time.time_ns() - decoded.header.capture_ns) / 1e6)
            for client in view.clients:
                if client.jpeg is not None:
                    view.dropped += 1
                client.jpeg = decoded.jpeg
                client.wake.set()

    def live(self) -> list[dict]:
        now = time.monotonic()
        with self.lock:
            return [v.info() for v in self.views.values()
                    if v.header is not None and not v.ended and now - v.arrivals[-1] < STALE_S]

    def join(self, stream_id: str) -> _Client | None:
        """A new viewer of a live stream (None if there is no such stream), with its newest frame."""
        with self.lock:
            view = self.views.get(stream_id)
            if view is None or view.ended or view.jpeg is None:
                return None
            client = _Client()
            client.jpeg = view.jpeg
            client.wake.set()
            view.clients.add(client)
            return client

    def leave(self, stream_id: str, client: _Client) -> None:
        with self.lock:
            view = self.views.get(stream_id)
            if view is not None:
                view.clients.discard(client)

    def take(self, client: _Client) -> memoryview | None:
        with self.lock:
            jpeg, client.jpeg = client.jpeg, None
            client.wake.clear()
            return jpeg

    def latest(self, stream_id: str) -> memoryview | None:
        with self.lock:
            view = self.views.get(stream_id)
            return None if view is None or view.ended else view.jpeg

    @property
    def viewers(self) -> int:
        with self.lock:
            return sum(len(v.clients) for v in self.views.values())

    def counts(self) -> dict[str, tuple[int, int]]:
        """stream id → (frames received, frames dropped for slow viewers), for the metrics."""
        with self.lock:
            return {v.id: (v.frames, v.dropped) for v in self.views.values()}

    def close(self) -> None:
        with self.lock:
            self.closing = True
            for view in self.views.values():
                for client in view.clients:
                    client.ended = True
                    client.wake.set()


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>chromacast</title>
<style>body{font-family:sans-serif;background:#111;color:#ddd;margin:1em}
.stream{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
.stream img{display:block;max-width:640px;background:#000}.info{font-size:90%;margin:.3em 0}
#none{color:#888}</style></head>
<body><h1>chromacast</h1><p id="none">no live streams</p><div id="streams"></div>
<script>
const shown = new Map();
async function update() {
  let streams = [];
  try { streams = await (await fetch("/streams.json", {cache: "no-store"})).json(); } catch (e) {}
  const live = new Set(streams.map(s => s.id));
  for (const [id, el] of shown) if (!live.has(id)) { el.remove(); shown.delete(id); }
  for (const s of streams) {
    let el = shown.get(s.id);
    if (!el) {
      el = document.createElement("div"); el.className = "stream"; el.dataset.id = s.id;
      el.innerHTML = '<div class="info"></div><img alt="">';
      el.querySelector("img").src = s.mjpeg;
      document.getElementById("streams").appendChild(el); shown.set(s.id, el);
    }
    const latency = s.latency_ms === null ? "n/a" : s.latency_ms.toFixed(0) + " ms";
    el.querySelector(".info").textContent =
      `${s.id}: ${s.width}x${s.height}, ${s.fps.toFixed(1)} fps, latency ${latency}, ${s.viewers} viewers`;
  }
  document.getElementById("none").style.display = streams.length ? "none" : "";
}
update(); setInterval(update, 1000);
</script></body></html>
"""

_STREAM_PATH = re.compile(rf"^/stream/({protocol.STREAM_ID_PATTERN})\.(mjpg|jpg)$")


class _Handler(BaseHTTPRequestHandler):
    server: "_HttpServer"
    protocol_version = "HTTP/1.0"  # one request per connection: the MJPEG response ends with it

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = self.path.split("?", 1)[0]
        hub = self.server.hub
        if path in ("/", "/index.html"):
            return self._reply(200, "text/html; charset=utf-8", PAGE.encode())
        if path == "/streams.json":
            return self._reply(200, "application/json", json.dumps(hub.live()).encode())
        match = _STREAM_PATH.match(path)
        if match is None:
            return self._reply(404, "text/plain", b"not found\n")
        stream_id, kind = match.groups()
        if kind == "jpg":
            jpeg = hub.latest(stream_id)
            return (self._reply(200, "image/jpeg", jpeg) if jpeg is not None else
                    self._reply(404, "text/plain", f"no live stream {stream_id}\n".encode()))
        self._mjpeg(stream_id)

    def _reply(self, status: int, content_type: str, body: bytes | memoryview) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _mjpeg(self, stream_id: str) -> None:
        server, hub = self.server, self.server.hub
        if not server.admit():
            return self._reply(503, "text/plain", b"too many viewers\n")
        try:
            client = hub.join(stream_id)
            if client is None:
                return self._reply(404, "text/plain", f"no live stream {stream_id}\n".encode())
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(b"--" + BOUNDARY + b"\r\n")
                while not hub.closing:
                    if not client.wake.wait(1.0):
                        continue
                    jpeg = hub.take(client)
                    if jpeg is None:
                        if client.ended:
                            break
                        continue
                    # the boundary right after the part: a browser shows a part once it sees the next boundary
                    self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                    self.wfile.write(jpeg)
                    self.wfile.write(b"\r\n--" + BOUNDARY + b"\r\n")
            except OSError:  # the viewer went away or stalled past send_timeout_s
                pass
            finally:
                hub.leave(stream_id, client)
        finally:
            server.release()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], hub: WebHub, max_clients: int, timeout_s: float):
        handler = type("Handler", (_Handler,), {"timeout": timeout_s})  # socket timeout of each connection
        self.hub = hub
        self._slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, handler)

    def admit(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


class WebServer:
    """The HTTP server in its own thread; binds in the constructor (SinkError when it cannot)."""

    def __init__(self, config: WebConfig, hub: WebHub | None = None):
        self.hub = hub or WebHub()
        try:
            self.httpd = _HttpServer((config.host, config.port), self.hub, config.max_clients,
                                     config.send_timeout_s)
        except OSError as exc:
            raise SinkError(f"web: cannot listen on {config.host}:{config.port}: "
                            f"{exc.strerror or exc}") from None
        self.host, self.port = self.httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="web", daemon=True)
        self._thread.start()
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("web viewer on %s: anyone who reaches it can watch every stream", self.url)

    def close(self) -> None:
        if self._thread.is_alive():
            self.hub.close()
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join(2)


def main(argv: list[str] | None = None) -> int:
    """`chromacast web`: serve a publisher's streams to browsers."""
    from stream.logs import error_line, setup_logging
    from stream.security import (SecurityError, add_subscriber_key_options, subscriber_security_from_args,
                                 subscriber_socket_setup)
    from stream.signals import install_stop_handlers
    from stream.sinks.tap import ZmqFeed
    from stream.subscribers import DEFAULT_URL

    parser = argparse.ArgumentParser(prog="chromacast web", description="Serve published streams to "
                                     "browsers: a page at / and MJPEG at /stream/<id>.mjpg.")
    parser.add_argument("--connect", default=DEFAULT_URL, metavar="URL",
                        help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--stream", metavar="ID", help="only this stream id")
    parser.add_argument("-q", "--quiet", action="store_true")
    add_subscriber_key_options(parser)  # with CurveZMQ on, this gateway is the authorised client
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    try:
        if args.stream and not protocol.is_valid_stream_id(args.stream):
            raise ValueError(f"invalid stream id {args.stream!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        config = WebConfig(host=args.host, port=args.port)
        setup = subscriber_socket_setup(subscriber_security_from_args(args))
        server = WebServer(config)
    except (ValueError, SecurityError, SinkError) as exc:
        error_line("web", _one_line(exc))
        return 2
    try:
        feed = ZmqFeed(args.connect, [server.hub], args.stream, setup)
    except ValueError as exc:
        server.close()
        error_line("web", str(exc))
        return 2
    stop = threading.Event()
    install_stop_handlers(stop.set)
    feed.start()
    print(f"chromacast web: serving {args.connect} at {server.url}", flush=True)
    try:
        stop.wait()
    finally:
        feed.stop()
        feed.join(2)
        server.close()
    return 0


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"--{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc).splitlines()[0]
