"""Subscribers to a published stream: `chromacast view` (a window) and `chromacast record` (mp4).

`Subscriber` is the reusable part: a SUB socket that yields decoded messages, counts
malformed ones (and never fails on them) and counts frames missed by sequence number.
With `latest=True` it keeps only the newest frame (ZeroMQ CONFLATE): a viewer that falls
behind or reconnects always resumes at the newest frame, with no backlog.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zmq

from stream import protocol
from stream.logs import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_verbosity_options,
                         error_line, plural, positive_float, positive_int, setup_logging, verbosity)
from stream.protocol import SEPARATOR, Message, ProtocolError
from stream.security import (SecurityError, add_subscriber_key_options, subscriber_security_from_args,
                             subscriber_socket_setup)
from stream.signals import install_stop_handlers

log = logging.getLogger("chromacast")

DEFAULT_URL = "tcp://127.0.0.1:5555"


class Subscriber:
    def __init__(self, url: str = DEFAULT_URL, stream: str | None = None, latest: bool = False,
                 rcvhwm: int = 1000, socket_setup: Callable[[zmq.Socket], None] | None = None,
                 context: zmq.Context | None = None, max_pixels: int = protocol.DEFAULT_MAX_PIXELS):
        """`stream`: only this stream id (else all); `latest`: newest frame only (use it with one
        stream: CONFLATE keeps the last message of all subscribed topics together);
        `max_pixels`: larger frames are refused unread (a tiny message can claim a huge picture).
        `socket_setup` is called on the SUB socket before it connects (socket security)."""
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if latest:
            self.socket.setsockopt(zmq.CONFLATE, 1)
        else:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket_setup = socket_setup
        if socket_setup:
            socket_setup(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, protocol.topic(stream) if stream else b"")
        try:
            self.socket.connect(url)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot connect to {url}: {exc.strerror}") from None
        self.url = url
        self.max_pixels = max_pixels
        self.received = 0
        self.malformed = 0
        self.missed = 0  # frames skipped by sequence number (publisher dropped them for us)
        self.latencies_ms: deque[float] = deque(maxlen=10000)
        self._last_seq: dict[str, int] = {}

    def receive(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message (frame or end of stream), or None after `timeout_s`.
        The deadline holds even while malformed messages keep arriving."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = 1000 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if self.socket.poll(wait_ms):
                message = self._parse(self.socket.recv_multipart())
                if message is not None:
                    return message
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _parse(self, parts: list[bytes]) -> Message | None:
        try:
            if len(parts) != 1:
                raise ProtocolError(f"expected one message part, got {len(parts)}")
            message = protocol.decode(parts[0])
        except ProtocolError as exc:
            self.count_malformed(exc)
            return None
        self._track(message)
        return message

    def image(self, message: Message) -> np.ndarray | None:
        """The frame's pixels, or None (counted as malformed, not received) for a broken JPEG
        or one over `max_pixels`."""
        try:
            return protocol.decode_image(message, self.max_pixels)
        except ProtocolError as exc:
            self.received -= 1
            self.count_malformed(exc)
            return None

    def frames(self, timeout_s: float | None = None):
        """Decoded (message, BGR image) pairs; end messages come as (message, None). Ends after
        `timeout_s` without one (a frame whose JPEG is refused does not count)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            message = self.receive(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if message is None:
                return
            image = None if message.end is not None else self.image(message)
            if message.end is not None or image is not None:
                yield message, image
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
            elif deadline is not None and time.monotonic() >= deadline:
                return

    def count_malformed(self, exc: Exception) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning("ignoring malformed messages (%s)", exc)

    def _track(self, message: Message) -> None:
        header = message.header
        if header is None:
            self._last_seq.pop(message.stream, None)
            return
        self.received += 1
        last = self._last_seq.get(message.stream)
        if last is not None and header.seq > last + 1:
            self.missed += header.seq - last - 1
        self._last_seq[message.stream] = header.seq
        self.latencies_ms.append((time.time_ns() - header.capture_ns) / 1e6)

    def summary(self) -> str:
        text = f"received {plural(self.received, 'frame')}"
        if self.latencies_ms:
            p50, p99 = np.percentile(np.asarray(self.latencies_ms), (50, 99))
            text += f", latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        if self.missed:
            text += f", {self.missed} missed"
        if self.malformed:
            text += f", {plural(self.malformed, 'malformed message')} ignored"
        return text

    def published_streams(self, listen_s: float = 1.0) -> list[str]:
        """The stream ids published at this URL, heard on a second socket subscribed to every
        stream for `listen_s` (to tell a user who waits for a stream that is not there)."""
        probe = self.context.socket(zmq.SUB)
        probe.setsockopt(zmq.LINGER, 0)
        probe.setsockopt(zmq.RCVHWM, 64)
        if self._socket_setup:
            self._socket_setup(probe)
        probe.setsockopt(zmq.SUBSCRIBE, b"")
        seen: set[str] = set()
        try:
            probe.connect(self.url)
            deadline = time.monotonic() + listen_s
            while (left := deadline - time.monotonic()) > 0:
                if probe.poll(int(left * 1000) + 1):
                    name = probe.recv().split(SEPARATOR, 1)[0].decode("ascii", "replace")
                    if protocol.is_valid_stream_id(name):
                        seen.add(name)
        finally:
            probe.close(0)
        return sorted(seen)

    def close(self) -> None:
        self.socket.close(0)
        if self._own_context:
            self.context.term()


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default=DEFAULT_URL, metavar="URL",
                        help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--stream", metavar="ID", help="only this stream id")
    parser.add_argument("--frames", type=positive_int, metavar="N", help="stop after N frames")
    parser.add_argument("--timeout", type=positive_float, metavar="S",
                        help="give up after S seconds without a frame (default: wait)")
    parser.add_argument("--max-pixels", type=positive_int, default=protocol.DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse frames larger than N pixels (default {protocol.DEFAULT_MAX_PIXELS}, "
                             "8192x8192)")
    add_verbosity_options(parser)
    add_subscriber_key_options(parser)  # --server-key, --client-key (CurveZMQ)


def _open(command: str, args, latest: bool) -> Subscriber | None:
    try:
        if args.stream and not protocol.is_valid_stream_id(args.stream):
            raise ValueError(f"invalid stream id {args.stream!r}: {protocol.STREAM_ID_RULE}")
        setup = subscriber_socket_setup(subscriber_security_from_args(args))  # checks the key files
        return Subscriber(args.connect, args.stream, latest=latest, socket_setup=setup,
                          max_pixels=args.max_pixels)
    except (ValueError, SecurityError) as exc:
        error_line(command, str(exc))
        return None


SILENT_HINT_S = 3.0  # after this long without a frame, say once which streams are published


class Follow:
    """The receive loop of view and record: frames as they come, until a signal or `--timeout`
    seconds without a frame (checked even while malformed messages keep arriving)."""

    def __init__(self, subscriber: Subscriber, args: argparse.Namespace, interrupted, poll_s: float = 0.2):
        self.subscriber, self.args, self.interrupted, self.poll_s = subscriber, args, interrupted, poll_s
        self.timed_out = False

    def __iter__(self) -> Iterator[tuple[Message | None, np.ndarray | None]]:
        """(frame message, image), (end message, None), or (None, None) on an idle tick."""
        idle_since, told = time.monotonic(), False
        while not self.interrupted.is_set():
            idle = time.monotonic() - idle_since
            if self.args.timeout is not None and idle >= self.args.timeout:
                self.timed_out = True
                return
            message = self.subscriber.receive(self.poll_s)
            if message is None:
                if not told and idle >= SILENT_HINT_S:
                    told = True
                    log.warning("no frames yet; %s", self.streams_line())
                yield None, None
                continue
            if message.end is not None:
                yield message, None
                continue
            image = self.subscriber.image(message)
            if image is not None:
                idle_since = time.monotonic()
                yield message, image

    def streams_line(self) -> str:
        streams = self.subscriber.published_streams()
        where = self.subscriber.url
        if not streams:
            return f"nothing is published at {where}"
        return f"streams published at {where}: {', '.join(streams)}"

    def no_frames_error(self) -> str:
        asked = f"of stream {self.args.stream} " if self.args.stream else ""
        return f"no frames {asked}from {self.args.connect} within {self.args.timeout:g} s; {self.streams_line()}"


def view_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromacast view", description="Show a published stream "
                                     "in a window (q or Esc closes it).")
    _common_args(parser)
    parser.add_argument("--latest", action="store_true",
                        help="newest frame only, never a backlog (use with --stream)")
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))
    from stream.sinks.window import display_unavailable_reason

    reason = display_unavailable_reason()
    if reason:
        error_line("view", reason)
        return EXIT_USAGE
    import cv2

    if args.latest and not args.stream:
        log.warning("--latest keeps one frame across all streams; add --stream ID to follow one")
    subscriber = _open("view", args, args.latest)
    if subscriber is None:
        return EXIT_USAGE
    interrupted = install_stop_handlers()
    log.info("viewing %s%s", args.connect, f" stream {args.stream}" if args.stream else "")
    follow, shown = Follow(subscriber, args, interrupted, poll_s=0.05), 0
    try:
        for message, image in follow:
            if message is not None and message.end is not None:
                log.info("stream %s ended", message.stream)
            elif image is not None:
                cv2.imshow(f"chromacast {message.stream}", image)
                shown += 1
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27) or (args.frames and shown >= args.frames):
                break
        status = EXIT_OK
        if follow.timed_out and not shown:
            error_line("view", follow.no_frames_error())
            status = EXIT_FAILURE
    finally:
        cv2.destroyAllWindows()
        subscriber.close()
    print(subscriber.summary(), flush=True)
    return EXIT_INTERRUPTED if interrupted.is_set() else status


def record_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromacast record", description="Record a published stream "
                                     "to mp4 at the stream's fps (stops at the stream's end, after --frames, "
                                     "or on Ctrl-C).")
    _common_args(parser)
    parser.add_argument("--out", required=True, help="mp4 file to write; {stream} in it records every "
                        "stream to its own file")
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))
    from stream.sinks.base import SinkError
    from stream.sinks.recorder import Recording

    per_stream = "{stream}" in args.out
    try:
        from stream.config import RecordConfig

        RecordConfig(path=args.out)  # the same placeholder rule as a pipeline's record.path
    except ValueError as exc:
        error_line("record", f"--out: {str(exc).splitlines()[-1].strip()}")
        return EXIT_USAGE
    subscriber = _open("record", args, latest=False)
    if subscriber is None:
        return EXIT_USAGE
    interrupted = install_stop_handlers()
    log.info("recording %s%s to %s", args.connect, f" stream {args.stream}" if args.stream else "", args.out)
    writers: dict[str, Recording] = {}
    finished: dict[str, Recording] = {}  # streams that ended or have their --frames
    follow, status = Follow(subscriber, args, interrupted), EXIT_OK

    def finish(stream_id: str) -> None:
        writer = finished[stream_id] = writers.pop(stream_id)
        writer.close()

    try:
        for message, image in follow:
            if message is None:
                continue
            stream_id = message.stream
            if stream_id in finished:
                continue
            if message.end is not None:
                if stream_id in writers:
                    log.info("stream %s ended", stream_id)
                    finish(stream_id)
                    if not writers:
                        break
                continue
            if stream_id not in writers:
                if (writers or finished) and not per_stream:
                    streams = sorted({*writers, *finished, stream_id})
                    error_line("record", f"several streams are published ({', '.join(streams)}): give "
                               "--stream ID, or put {stream} in --out to record each to its own file")
                    for writer in writers.values():
                        writer.abort()
                    writers.clear()
                    status = EXIT_USAGE
                    break
                writers[stream_id] = Recording(Path(args.out.format(stream=stream_id)), message.header.fps)
            writers[stream_id].write(image)
            if args.frames and writers[stream_id].frames >= args.frames:
                finish(stream_id)
                if not writers:
                    break
    except SinkError as exc:
        error_line("record", str(exc))
        status = EXIT_FAILURE
    finally:
        for stream_id in list(writers):
            finish(stream_id)
    written = [file for recording in finished.values() for file in recording.files]
    try:
        if written:
            files = ", ".join(f"{plural(frames, 'frame')} to {path}" for path, frames in written)
            print(f"{subscriber.summary()}; wrote {files}", flush=True)
        else:
            print(f"{subscriber.summary()}; nothing written", flush=True)
            if follow.timed_out:
                error_line("record", follow.no_frames_error())
                status = status or EXIT_FAILURE
    finally:
        subscriber.close()
    return EXIT_INTERRUPTED if interrupted.is_set() and status == EXIT_OK else status
