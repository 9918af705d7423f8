"""The wire format, on real ZeroMQ sockets over loopback."""
from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import pattern_frame
from stream import protocol
from stream.config import PublishConfig
from stream.frame import Frame, FrameHeader
from stream.protocol import ProtocolError
from stream.sinks.zmq_pub import ZmqPublisher
from stream.subscribers import Subscriber


def make_frame(stream: str = "cam1", seq: int = 0, width: int = 64, height: int = 48) -> Frame:
    header = FrameHeader(stream, seq, time.time_ns(), width, height, 25.0, epoch=0, reset=seq == 0)
    header.stamp("prep")
    colour = np.dstack([pattern_frame(seq, width, height)] * 3)
    return Frame(header, colour[:, :, 0], colour[:, :, 0], colour)


def encoded(frame: Frame, quality: int = 90) -> bytes:
    return protocol.encode_frame(frame.header, protocol.encode_image(frame.colour, quality))


def test_round_trip_keeps_header_and_pixels():
    frame = make_frame(seq=7)
    message = protocol.decode(encoded(frame, quality=100))
    assert message.stream == "cam1" and message.end is None
    h = message.header
    assert (h.seq, h.capture_ns, h.width, h.height, h.fps, h.reset) == (7, frame.header.capture_ns, 64, 48, 25.0, False)
    assert h.stages == frame.header.stages
    image = protocol.decode_image(message)
    assert image.shape == frame.colour.shape
    assert np.abs(image.astype(int) - frame.colour).mean() < 2  # JPEG at quality 100


def test_message_is_single_part_with_terminated_topic():
    data = encoded(make_frame("cam1"))
    assert data.startswith(b"cam1\x00")
    assert not data.startswith(protocol.topic("cam10"))
    assert not protocol.topic("cam1") == protocol.topic("cam10")[:5]


def test_end_message():
    message = protocol.decode(protocol.encode_end("cam1", "camera gone"))
    assert message.header is None and message.end.stream == "cam1" and message.end.reason == "camera gone"


@pytest.mark.parametrize("data, problem", [
    (b"", "topic"),
    (b"cam1", "topic"),
    (b"\x00{}\x00x", "topic"),
    (b"cam1\x00{\"v\":1", "0x00 after the header"),
    (b"cam1\x00not json\x00jpeg", "JSON"),
    (b"cam1\x00[1,2]\x00jpeg", "JSON object"),
    (b"cam1\x00{\"v\":2,\"stream\":\"cam1\"}\x00jpeg", "version"),
    (b"cam1\x00{\"v\":1,\"stream\":\"cam2\"}\x00jpeg", "differs from topic"),
    (b"ca m\x00{\"v\":1,\"stream\":\"ca m\"}\x00jpeg", "invalid stream id"),
    (b"cam1\x00\xff\xfe\x00jpeg", "ASCII"),
])
def test_malformed_messages_raise_protocol_error(data, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(data)


def _with_header(**changes) -> bytes:
    fields = protocol.header_dict(make_frame().header)
    fields.update(changes)
    fields = {k: v for k, v in fields.items() if v is not ...}
    return b"cam1\x00" + json.dumps(fields).encode() + b"\x00" + protocol.encode_image(make_frame().colour)


@pytest.mark.parametrize("changes", [{"seq": -1}, {"seq": True}, {"seq": "3"}, {"seq": ...}, {"width": 0},
                                     {"fps": "fast"}, {"stages": {"prep": 1.5}}, {"reset": "yes"},
                                     {"capture_ns": ...}])
def test_bad_header_fields_raise_protocol_error(changes):
    with pytest.raises(ProtocolError, match="header field"):
        protocol.decode(_with_header(**changes))


def test_bad_or_mismatched_jpeg_raises_protocol_error():
    good = encoded(make_frame())
    cut = good.index(b"\x00", 5) + 1
    with pytest.raises(ProtocolError, match="no JPEG"):
        protocol.decode(good[:cut])
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        protocol.decode_image(protocol.decode(good[:cut] + b"not a jpeg at all"))
    with pytest.raises(ProtocolError, match="header says"):
        protocol.decode_image(protocol.decode(_with_header(width=65)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_protocol_error(data):
    try:
        message = protocol.decode(data)
    except ProtocolError:
        return
    if message.header is not None:
        try:
            protocol.decode_image(message)
        except ProtocolError:
            pass


VALID = encoded(make_frame(seq=3), quality=50)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(VALID)))
def test_fuzz_mutated_messages_only_protocol_error(flips, cut):
    data = bytearray(VALID[:cut] if cut > 5 else VALID)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    try:
        message = protocol.decode(bytes(data))
        if message.header is not None:
            protocol.decode_image(message)
    except ProtocolError:
        pass


# --- real sockets ------------------------------------------------------------------------------

def publisher(sndhwm: int = 16) -> ZmqPublisher:
    return ZmqPublisher(PublishConfig(bind="tcp://127.0.0.1:*", sndhwm=sndhwm))


def wait_until_connected(pub: ZmqPublisher, sub: Subscriber, stream: str = "probe") -> None:
    """PUB drops messages until the subscription arrives: send probes until one gets through."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pub.send(protocol.encode_end(stream))
        if sub.receive(0.05) is not None:
            return
    raise AssertionError("subscriber never connected")


def test_subscriber_receives_frames_in_order_with_valid_headers():
    pub = publisher(sndhwm=1000)
    sub = Subscriber(pub.endpoint)
    try:
        wait_until_connected(pub, sub)
        for seq in range(30):
            pub.write(make_frame(seq=seq))
        got = []
        for message, image in sub.frames(timeout_s=5):
            got.append(message.header)
            assert image.shape == (48, 64, 3)
            if len(got) == 30:
                break
        assert [h.seq for h in got] == list(range(30))
        assert all(h.stream == "cam1" and "publish" in h.stages and h.stages["publish"] >= h.capture_ns
                   for h in got)
        assert sub.malformed == 0 and sub.missed == 0
    finally:
        sub.close()
        pub.close()


def test_topic_filter_does_not_match_longer_ids():
    pub = publisher()
    sub = Subscriber(pub.endpoint, stream="cam1")
    try:
        wait_until_connected(pub, sub, stream="cam1")
        for seq in range(5):
            pub.write(make_frame("cam10", seq))
            pub.write(make_frame("cam1", seq))
        streams = [m.stream for _, m in zip(range(5), iter(lambda: sub.receive(2), None))]
        assert streams == ["cam1"] * 5
        assert sub.receive(0.3) is None  # nothing from cam10 is waiting either
    finally:
        sub.close()
        pub.close()


def test_subscriber_survives_malformed_messages_and_counts_them():
    context = zmq.Context()
    raw = context.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 10
        while sub.receive(0.05) is None:  # wait for the subscription to arrive
            raw.send(protocol.encode_end("probe"))
            assert time.monotonic() < deadline
        good = encoded(make_frame(seq=1))
        raw.send_multipart([b"cam1\x00", b"{}", b"jpeg"])  # wrong part count
        raw.send(b"cam1\x00{broken json\x00")  # bad header
        raw.send(good[:good.index(b"\x00", 5) + 1] + b"\xff\xd8garbage")  # bad JPEG
        raw.send(good)
        frames = [pair for _, pair in zip(range(1), sub.frames(timeout_s=3))]
        assert len(frames) == 1 and frames[0][0].header.seq == 1
        assert sub.malformed == 3
    finally:
        sub.close()
        raw.close(0)
        context.term()


def test_latest_only_subscriber_gets_newest_frame_without_backlog():
    pub = publisher(sndhwm=1000)
    sub = Subscriber(pub.endpoint, stream="cam1", latest=True)
    try:
        wait_until_connected(pub, sub, stream="cam1")
        for seq in range(40):
            pub.write(make_frame(seq=seq))
        time.sleep(0.5)  # let everything arrive; CONFLATE keeps only the last one
        message = sub.receive(2)
        assert message.header.seq == 39
        assert sub.receive(0.3) is None
    finally:
        sub.close()
        pub.close()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_stalled_subscriber_neither_blocks_publisher_nor_grows_memory():
    pub = publisher(sndhwm=8)
    stalled = Subscriber(pub.endpoint, rcvhwm=8)  # connected, never reads
    reader = Subscriber(pub.endpoint, rcvhwm=8)
    try:
        wait_until_connected(pub, stalled)
        wait_until_connected(pub, reader)
        payload = np.random.default_rng(0).integers(0, 255, 200_000, np.uint8).tobytes()  # ~200 KB frames
        header = make_frame().header

        def burst(first: int, count: int) -> int:
            received = 0
            for seq in range(first, first + count):
                header.seq = seq
                pub.send(protocol.encode_frame(header, payload))
                while reader.socket.poll(0):
                    reader.socket.recv()
                    received += 1
                time.sleep(0.001)
            return received

        burst(0, 300)  # fill every buffer on the stalled path
        baseline = rss_mib()
        started = time.monotonic()
        received = burst(300, 1500)  # 300 MB more for the stalled subscriber if nothing were dropped
        elapsed = time.monotonic() - started
        grown = rss_mib() - baseline
        assert grown < 120, f"memory grew by {grown:.0f} MiB with a stalled subscriber"
        assert elapsed < 60, "the publisher was held up by the stalled subscriber"
        assert received > 300, f"the reading subscriber got only {received} of 1500 frames"
    finally:
        stalled.close()
        reader.close()
        pub.close()
