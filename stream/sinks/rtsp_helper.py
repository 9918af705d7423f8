"""RTSP server process: chromacast's JPEG frames → H.264 at rtsp://HOST:PORT/<stream id>.

Run by stream/sinks/rtsp.py under Debian's /usr/bin/python3, the one Python with GStreamer's
bindings (gi); so this file uses the standard library and gi only, nothing from chromacast.

    stdin   messages in chromacast's wire format (docs/protocol.md), each after its length
            (4 bytes, big-endian)
    stdout  "READY <port>" once listening, then "VIEWERS <n>" whenever the client count changes
    stderr  "ERROR: ..." (one line) and exit status 2 when it cannot serve; 3 when gi or the
            GStreamer plugins are missing

One shared media per stream (one encoder however many clients): appsrc (image/jpeg, leaky:
the newest frames win when the encoder is behind) → jpegdec → x264enc tune=zerolatency →
rtph264pay. A key frame every key_interval_s lets a late client start at once. A mount exists
from a stream's first frame to its end message; nothing is encoded while no client watches.
"""
import argparse
import json
import struct
import sys
import threading
from fractions import Fraction

PACKAGES = ("gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly")
ELEMENTS = ("appsrc", "jpegparse", "jpegdec", "videoconvert", "videoscale", "x264enc", "rtph264pay")
MAX_MESSAGE = 64 << 20


def fail(message, status=2):
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    gi.require_version("GstVideo", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer, GstVideo
except (ImportError, ValueError) as exc:
    fail(f"GStreamer's RTSP server is not installed for {sys.executable} ({exc}); "
         f"Debian packages: {PACKAGES}", 3)


def launch_line(width, height, fps, key_interval_s, bitrate_kbps):
    rate = Fraction(fps if fps > 0 else 25).limit_denominator(1001)
    even = "" if width % 2 == 0 and height % 2 == 0 else \
        f"videoscale ! video/x-raw,width={width - width % 2},height={height - height % 2} ! "  # 4:2:0 needs even sides
    key = max(1, round(float(rate) * key_interval_s))
    # threads=1: zerolatency's sliced threads reached clients with broken slices (GStreamer 1.22),
    # and one thread leaves the other cores to the pipeline
    bitrate = f" bitrate={bitrate_kbps}" if bitrate_kbps else ""
    return (f"( appsrc name=src is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream "
            f"caps=image/jpeg,width={width},height={height},framerate={rate.numerator}/{rate.denominator} ! "
            f"jpegparse ! jpegdec ! videoconvert ! {even}video/x-raw,format=I420 ! "
            f"x264enc name=enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={key}{bitrate} ! "
            "rtph264pay name=pay0 pt=96 config-interval=-1 )")


class Stream:
    def __init__(self, server, stream_id, size, fps, args):
        self.server, self.path, self.size = server, f"/{stream_id}", size
        self.sources = {}  # appsrc → encoder of each prepared media (one, or two while one is torn down)
        self.lock = threading.Lock()
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(launch_line(size[0], size[1], fps, args.key_interval, args.bitrate))
        self.factory.set_shared(True)
        self.factory.connect("media-configure", self._configure)
        server.get_mount_points().add_factory(self.path, self.factory)

    def _configure(self, _factory, media):
        bin_ = media.get_element()
        src = bin_.get_child_by_name("src")
        with self.lock:
            self.sources[src] = bin_.get_child_by_name("enc")
        media.connect("unprepared", lambda _m: self._forget(src))

    def _forget(self, src):
        with self.lock:
            self.sources.pop(src, None)

    def push(self, jpeg):
        with self.lock:
            sources = list(self.sources)
        for src in sources:
            src.emit("push-buffer", Gst.Buffer.new_wrapped(jpeg))

    def key_frame(self):
        """Have the encoder start a key frame now: a client that just joined decodes from it."""
        with self.lock:
            encoders = list(self.sources.values())
        for encoder in encoders:
            event = GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, True, 0)
            encoder.get_static_pad("src").send_event(event)
        return False  # as a GLib timeout: once

    def end(self):
        self.server.get_mount_points().remove_factory(self.path)
        with self.lock:
            sources = list(self.sources)
        for src in sources:
            src.emit("end-of-stream")


def read_messages(stdin):
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack(">I", head)
        if size > MAX_MESSAGE:
            print(f"ERROR: message of {size} bytes on stdin: not chromacast's feed", file=sys.stderr, flush=True)
            return
        data = stdin.read(size)
        if len(data) < size:
            return
        yield data


def feed(server, args, loop, streams):
    for data in read_messages(sys.stdin.buffer):
        first = data.find(b"\x00")
        second = data.find(b"\x00", first + 1)
        try:
            header = json.loads(data[first + 1:second])
            stream_id = data[:first].decode("ascii")
        except ValueError:
            continue
        if stream_id in (".", "..") or first < 1 or second < 0:
            continue  # not a URL path segment; the parent says so
        stream = streams.get(stream_id)
        if header.get("end"):
            if stream is not None:
                stream.end()
                del streams[stream_id]
            continue
        size = (int(header["width"]), int(header["height"]))
        if stream is not None and stream.size != size:  # the stream restarted at another size
            stream.end()
            stream = None
        if stream is None:
            stream = streams[stream_id] = Stream(server, stream_id, size, float(header.get("fps") or 0), args)
        stream.push(data[second + 1:])
    GLib.idle_add(loop.quit)  # the parent closed the pipe: its pipeline has ended


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--key-interval", type=float, default=0.5)
    parser.add_argument("--bitrate", type=int, default=0)
    args = parser.parse_args()
    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        fail(f"GStreamer elements missing: {', '.join(missing)} (Debian packages: {PACKAGES})", 3)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    viewers = [0]

    def count(delta):
        viewers[0] += delta
        print(f"VIEWERS {viewers[0]}", flush=True)

    streams = {}

    def playing(_client, ctx):
        # a shared media is already encoding: without a fresh key frame the client would wait up to
        # key_interval_s, or show broken pictures; asked again a moment later, once its PLAY is done
        stream = streams.get(ctx.uri.abspath.strip("/").split("/")[0])
        if stream is not None:
            stream.key_frame()
            GLib.timeout_add(100, stream.key_frame)

    def connected(_server, client):
        count(1)
        client.connect("closed", lambda _c: count(-1))
        client.connect("play-request", playing)

    server.connect("client-connected", connected)
    if server.attach(None) == 0:
        fail(f"cannot listen on {args.host}:{args.port} (address in use or not available)")
    loop = GLib.MainLoop()
    threading.Thread(target=feed, args=(server, args, loop, streams), daemon=True).start()
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
