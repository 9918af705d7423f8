"""ZeroMQ PUB sink: each colorized frame as one single-part message (stream/protocol.py).

PUB never waits for subscribers: a subscriber that falls SNDHWM messages behind misses
messages instead of slowing the publisher or growing its memory. Binds to 127.0.0.1 unless
the config says otherwise.
"""
from __future__ import annotations

import logging
from typing import Callable

import zmq

from stream import protocol
from stream.config import PublishConfig
from stream.frame import Frame, StreamEnd
from stream.security import SecurityError, secure_publisher
from stream.sinks.base import Sink, SinkError

log = logging.getLogger("chromacast.publish")

SocketSetup = Callable[[zmq.Socket], None]


class ZmqPublisher(Sink):
    name = "publish"
    lossy = True

    def __init__(self, config: PublishConfig, socket_setup: SocketSetup | None = None,
                 context: zmq.Context | None = None):
        """`socket_setup` is called on the PUB socket before it binds: the place for socket
        security options (CurveZMQ server keys)."""
        self.quality = config.jpeg_quality
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, config.sndhwm)
        self.socket.setsockopt(zmq.LINGER, config.linger_ms)
        self._authenticator = None  # CurveZMQ key checker; stopped in close()
        if socket_setup:
            socket_setup(self.socket)
        if config.security is not None:
            try:
                self._authenticator = secure_publisher(self.context, self.socket,
                                                       config.security.server_secret_key,
                                                       config.security.allowed_clients_dir)
            except SecurityError as exc:
                self._close_socket()
                raise SinkError(str(exc)) from None
        elif not config.bind.startswith(("tcp://127.", "tcp://localhost:", "ipc://", "inproc://")):
            log.warning("publishing on %s without CurveZMQ: anyone who reaches it can subscribe "
                        "(see docs/security.md)", config.bind)
        try:
            self.socket.bind(config.bind)
        except zmq.ZMQError as exc:
            self._close_socket()
            raise SinkError(f"cannot bind {config.bind}: {exc.strerror}") from None
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.not_sent = 0

    def write(self, frame: Frame) -> None:
        jpeg = protocol.encode_image(frame.colour, self.quality)
        frame.header.stamp("publish")
        self.send(protocol.encode_frame(frame.header, jpeg))

    def end_stream(self, end: StreamEnd) -> None:
        self.send(protocol.encode_end(end.stream, end.reason))

    def send(self, message: bytes) -> None:
        """Send one encoded message without ever blocking."""
        try:
            self.socket.send(message, zmq.DONTWAIT)
            self.sent += 1
        except zmq.Again:
            self.not_sent += 1

    def close(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        self.socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()  # before term(): its open sockets would block term() forever
            self._authenticator = None
        if self._own_context:
            self.context.term()
