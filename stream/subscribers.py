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
from typing import Callable

import numpy as np
import zmq

from stream import protocol
from stream.logs import error_line, setup_logging
from stream.protocol import Message, ProtocolError
from stream.security import (SecurityError, add_subscriber_key_options, subscriber_security_from_args,
                             subscriber_socket_setup)
from stream.signals import install_stop_handlers

log = logging.getLogger("chromacast")

DEFAULT_URL = "tcp://127.0.0.1:5555"


class Subscriber:
    def __init__(self, url: str = DEFAULT_URL, stream: str | None = None, latest: bool = False,
                 rcvhwm: int = 1000, socket_setup: Callable[[zmq.Socket], None] | None = None,
                 context: zmq.Context | None = None):
        """`stream`: only this stream id (else all); `latest`: newest frame only (use it with one
        stream: CONFLATE keeps the last message of all subscribed topics together).
        `socket_setup` is called on the SUB socket before it connects (socket security)."""
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if latest:
            self.socket.setsockopt(zmq.CONFLATE, 1)
        else:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        if socket_setup:
            socket_setup(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, protocol.topic(stream) if stream else b"")
        try:
            self.socket.connect(url)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot connect to {url}: {exc.strerror}") from None
        self.url = url
        self.received = 0
        self.malformed = 0
        self.missed = 0  # frames skipped by sequence number (publisher dropped them for us)
        self.latencies_ms: deque[float] = deque(maxlen=10000)
        self._last_seq: dict[str, int] = {}

    def receive(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message (frame or end of stream), or None after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.socket.poll(left_ms if left_ms is not None else 1000):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            parts = self.socket.recv_multipart()
            try:
                if len(parts) != 1:
                    raise ProtocolError(f"expected one message part, got {len(parts)}")
                message = protocol.decode(parts[0])
            except ProtocolError as exc:
                self.count_malformed(exc)
                continue
            self._track(message)
            return message

    def frames(self, timeout_s: float | None = None):
        """Decoded (message, BGR image) pairs; end messages come as (message, None)."""
        while True:
            message = self.receive(timeout_s)
            if message is None:
                return
            if message.end is not None:
                yield message, None
                continue
            try:
                image = protocol.decode_image(message)
            except ProtocolError as exc:
                self.count_malformed(exc)
                continue
            yield message, image

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
        text = f"received {self.received} frames"
        if self.latencies_ms:
            p50, p99 = np.percentile(np.asarray(self.latencies_ms), (50, 99))
            text += f", latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        if self.missed:
            text += f", {self.missed} missed"
        if self.malformed:
            text += f", {self.malformed} malformed messages ignored"
        return text

    def close(self) -> None:
        self.socket.close(0)
        if self._own_context:
            self.context.term()


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default=DEFAULT_URL, metavar="URL",
                        help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--stream", metavar="ID", help="only this stream id")
    parser.add_argument("--frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="give up after S seconds without a frame (default: wait)")
    parser.add_argument("-q", "--quiet", action="store_true")
    add_subscriber_key_options(parser)  # --server-key, --client-key (CurveZMQ)


def _open(command: str, args, latest: bool) -> Subscriber | None:
    try:
        if args.stream and not protocol.is_valid_stream_id(args.stream):
            raise ValueError(f"invalid stream id {args.stream!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        setup = subscriber_socket_setup(subscriber_security_from_args(args))  # checks the key files
        return Subscriber(args.connect, args.stream, latest=latest, socket_setup=setup)
    except (ValueError, SecurityError) as exc:
        error_line(command, str(exc))
        return None


def view_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromacast view", description="Show a published stream "
                                     "in a window (q or Esc closes it).")
    _common_args(parser)
    parser.add_argument("--latest", action="store_true",
                        help="newest frame only, never a backlog (use with --stream)")
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    from stream.sinks.window import display_unavailable_reason

    reason = display_unavailable_reason()
    if reason:
        error_line("view", reason)
        return 2
    import cv2

    if args.latest and not args.stream:
        log.warning("--latest keeps one frame across all streams; add --stream ID to follow one")
    subscriber = _open("view", args, args.latest)
    if subscriber is None:
        return 2
    stop: list[bool] = []
    install_stop_handlers(lambda: stop.append(True))
    log.info("viewing %s%s", args.connect, f" stream {args.stream}" if args.stream else "")
    shown = 0
    try:
        while not stop:
            message = subscriber.receive(0.05 if args.timeout is None else args.timeout)
            if message is None:
                if args.timeout is not None:
                    break
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
                continue
            if message.end is not None:
                log.info("stream %s ended", message.stream)
                continue
            try:
                image = protocol.decode_image(message)
            except ProtocolError as exc:
                subscriber.count_malformed(exc)
                continue
            cv2.imshow(f"chromacast {message.stream}", image)
            shown += 1
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27) or (args.frames and shown >= args.frames):
                break
    finally:
        cv2.destroyAllWindows()
        subscriber.close()
    print(subscriber.summary(), flush=True)
    return 0


def record_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromacast record", description="Record a published stream "
                                     "to mp4 at the stream's fps (stops at the stream's end, after --frames, "
                                     "or on Ctrl-C).")
    _common_args(parser)
    parser.add_argument("--out", required=True, type=Path, help="mp4 file to write")
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    from stream.sinks.base import SinkError
    from stream.sinks.recorder import Mp4Writer

    subscriber = _open("record", args, latest=False)
    if subscriber is None:
        return 2
    stop: list[bool] = []
    install_stop_handlers(lambda: stop.append(True))
    log.info("recording %s%s to %s", args.connect, f" stream {args.stream}" if args.stream else "", args.out)
    writer: Mp4Writer | None = None
    recording: str | None = args.stream
    status = 0
    idle_since = time.monotonic()
    try:
        while not stop:
            message = subscriber.receive(0.2)  # short polls: a signal is noticed at once
            if message is None:
                if args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                    if writer is None:
                        error_line("record", f"no frames from {args.connect} within {args.timeout:g} s")
                        status = 1
                    break
                continue
            idle_since = time.monotonic()
            recording = recording or message.stream
            if message.stream != recording:
                continue
            if message.end is not None:
                log.info("stream %s ended", recording)
                break
            try:
                image = protocol.decode_image(message)
            except ProtocolError as exc:
                subscriber.count_malformed(exc)
                continue
            if writer is None:
                h = message.header
                writer = Mp4Writer(args.out, h.width, h.height, h.fps)
            writer.write(image)
            if args.frames and writer.frames >= args.frames:
                break
    except SinkError as exc:
        error_line("record", str(exc))
        status = 1
    finally:
        if writer is not None:
            writer.close()
        subscriber.close()
    print(f"{subscriber.summary()}; wrote {writer.frames if writer else 0} frames to {args.out}", flush=True)
    return status
