"""Where the web and RTSP outputs get their frames: encoded protocol messages (docs/protocol.md).

Every output that serves viewers takes the same bytes a ZeroMQ subscriber gets, so a frame
is JPEG-encoded once however many outputs there are:

- in a pipeline with a publisher, `TeePublisher` hands each message it sends to the taps too;
- in a pipeline without one, `EncodingSink` encodes (a lossy sink: it never slows the pipeline);
- `chromacast web` / `restream` read them from a publisher with `ZmqFeed`.

A tap's `offer` runs on the output thread: it must never block (each keeps at most a few
messages and drops the oldest).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Protocol

import zmq

from stream import protocol
from stream.frame import Frame, StreamEnd
from stream.sinks.base import Sink
from stream.sinks.zmq_pub import ZmqPublisher

log = logging.getLogger("chromacast.tap")


class Tap(Protocol):
    def offer(self, message: bytes) -> None:
        """One encoded message (frame or end); must return at once."""


class TeePublisher(ZmqPublisher):
    """The ZeroMQ publisher, also handing each message to `taps` (set after construction)."""

    taps: tuple[Tap, ...] = ()  # set on the instance by whoever opens the taps

    def send(self, message: bytes) -> None:
        super().send(message)
        for tap in self.taps:
            tap.offer(message)


class EncodingSink(Sink):
    """Encodes frames for the taps when nothing publishes them."""

    name = "encode"
    lossy = True

    def __init__(self, taps: Iterable[Tap], quality: int = 90):
        self.taps, self.quality = list(taps), quality

    def write(self, frame: Frame) -> None:
        self._offer(protocol.encode_frame(frame.header, protocol.encode_image(frame.colour, self.quality)))

    def end_stream(self, end: StreamEnd) -> None:
        self._offer(protocol.encode_end(end.stream, end.reason))

    def _offer(self, message: bytes) -> None:
        for tap in self.taps:
            tap.offer(message)


class ZmqFeed(threading.Thread):
    """Subscribes to a publisher and hands every message to the taps, until stop()."""

    def __init__(self, url: str, taps: Iterable[Tap], stream: str | None = None,
                 socket_setup: Callable[[zmq.Socket], None] | None = None):
        super().__init__(name="zmq-feed", daemon=True)
        self.taps = list(taps)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 64)  # the taps keep only the newest frames anyway
        if socket_setup:
            socket_setup(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, protocol.topic(stream) if stream else b"")
        try:
            self.socket.connect(url)
        except zmq.ZMQError as exc:
            self.socket.close(0)
            self.context.term()
            raise ValueError(f"cannot connect to {url}: {exc.strerror}") from None
        self.received = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if not self.socket.poll(200):
                    continue
                parts = self.socket.recv_multipart()
                if len(parts) != 1:
                    continue  # not chromacast's format: the taps would reject it anyway
                self.received += 1
                for tap in self.taps:
                    tap.offer(parts[0])
        finally:
            self.socket.close(0)
            self.context.term()

    def stop(self) -> None:
        self._halt.set()
