"""ZeroMQ PUB sink: each colorized frame as one single-part message (stream/protocol.py).

PUB never waits for subscribers: a subscriber that falls SNDHWM messages behind misses
messages instead of slowing the publisher or growing its memory. Binds to 127.0.0.1 unless
the config says otherwise.

The socket is an XPUB in manual mode, so the publisher decides which subscriptions take
effect: only the empty one (everything) and prefixes of the streams' own topics; anything else
is ignored and counted. libzmq still keeps every subscription a peer sent (for as long as that
peer stays connected, a few KiB each), so a peer that sends more than
`publish.max_subscriptions_per_peer` is disconnected (counted and logged): no local process
can grow the publisher's memory by flooding it with subscriptions.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Iterable

import zmq

from stream import protocol
from stream.config import PublishConfig
from stream.frame import Frame, StreamEnd
from stream.security import SecurityError, secure_publisher
from stream.sinks.base import Sink, SinkError

log = logging.getLogger("chromacast.publish")

SocketSetup = Callable[[zmq.Socket], None]
# streams not named in advance: at most this many distinct topics are ever accepted
MAX_OPEN_TOPICS = 1024


def _peer_of(frame: zmq.Frame) -> tuple | None:
    """(fd, address) of the connection a message came from; None once it has closed."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return (-1, "")
    if fd < 0:
        return (-1, "")  # inproc: no connection to tell apart
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return (fd, conn.getpeername())
    except OSError:
        return None
    finally:
        conn.detach()  # the fd stays libzmq's


class ZmqPublisher(Sink):
    name = "publish"
    lossy = True

    def __init__(self, config: PublishConfig, socket_setup: SocketSetup | None = None,
                 context: zmq.Context | None = None, streams: Iterable[str] | None = None):
        """`socket_setup` is called on the socket before it binds: the place for socket
        security options (CurveZMQ server keys). `streams`: the stream ids that will be
        published; subscriptions must be prefixes of their topics (None: any valid stream id,
        up to MAX_OPEN_TOPICS distinct topics)."""
        self.quality = config.jpeg_quality
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_MANUAL, 1)
        self.socket.setsockopt(zmq.SNDHWM, config.sndhwm)
        self.socket.setsockopt(zmq.RCVHWM, 256)  # subscriptions read ahead of this loop: few
        self.max_per_peer = config.max_subscriptions_per_peer
        self._per_peer: dict[tuple, int] = {}  # (fd, peer address) → subscriptions sent
        self.peers_dropped = 0
        self._topics = None if streams is None else [protocol.topic(s) for s in streams]
        self._accepted: set[bytes] = set()
        self.subscriptions_rejected = 0
        self._rejected_logged = 0.0
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

    def allows(self, topic: bytes) -> bool:
        """Whether a subscription to `topic` may take effect."""
        if topic in self._accepted:
            return True
        if self._topics is not None:
            ok = topic == b"" or any(t.startswith(topic) for t in self._topics)
        else:
            ok = len(self._accepted) < MAX_OPEN_TOPICS and protocol.is_topic_prefix(topic)
        if ok:
            self._accepted.add(topic)
        return ok

    def handle_subscriptions(self) -> None:
        """Apply the allowed (un)subscriptions that arrived since the last call; drop the rest.

        In manual mode a subscription reaches the socket's trie only through setsockopt, which
        applies to the peer whose message was read last, so each is handled as it is read."""
        while True:
            try:
                frame = self.socket.recv(zmq.DONTWAIT, copy=False)
            except zmq.Again:
                return
            message = frame.bytes
            peer = _peer_of(frame)
            if not message or message[0] not in (0, 1) or peer is None:
                continue  # not a subscription, or from a connection already closed
            topic = message[1:]
            if message[0] == 0:
                self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)
                continue
            sent = self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            if len(self._per_peer) > 4096:  # forget peers long gone (fds are reused)
                self._per_peer = {peer: sent}
            if sent > self.max_per_peer:
                if sent == self.max_per_peer + 1:
                    self._drop_peer(peer)
            elif self.allows(topic):
                self.socket.setsockopt(zmq.SUBSCRIBE, topic)
            else:
                self.subscriptions_rejected += 1
                now = time.monotonic()
                if now - self._rejected_logged > 10:
                    self._rejected_logged = now
                    log.warning("ignoring subscriptions to topics that are no stream here "
                                "(%d so far, e.g. %r)", self.subscriptions_rejected, topic[:40])

    def _drop_peer(self, peer: tuple) -> None:
        """Disconnect a peer: libzmq sees its connection end and frees what it kept for it."""
        fd, address = peer
        self.peers_dropped += 1
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else address or "(local socket)"
        log.warning("disconnected subscriber %s: more than %d subscriptions (%d dropped so far)",
                    where, self.max_per_peer, self.peers_dropped)
        try:
            with socket.socket(fileno=os.dup(fd)) as conn:  # a duplicate: libzmq keeps its own fd
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def send(self, message: bytes) -> None:
        """Send one encoded message without ever blocking."""
        self.handle_subscriptions()
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
