"""Fuzzing the two doors untrusted input comes through: the wire-format decoder and the
config loader. Whatever they are given, the only exception that may escape is the
documented one (ProtocolError, ConfigError)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream import protocol
from stream.config import ConfigError, PipelineConfig, load_config, parse_config
from stream.frame import FrameHeader
from stream.protocol import ProtocolError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_jpeg(width: int = 16, height: int = 12) -> bytes:
    ramp = np.linspace(0, 255, width * height * 3).astype(np.uint8).reshape(height, width, 3)
    return protocol.encode_image(ramp)


JPEG = small_jpeg()
HEADER = FrameHeader(stream="cam0", seq=7, capture_ns=1_700_000_000_000_000_000, width=16,
                     height=12, fps=25.0, reset=False, stages={"capture": 1, "publish": 2})
GOOD_MESSAGE = protocol.encode_frame(HEADER, JPEG)


def decode_fully(message: object) -> None:
    """What a subscriber does with a message: parse it, then decode the image of a frame."""
    try:
        decoded = protocol.decode(message)  # type: ignore[arg-type]
        if decoded.end is None:
            image = protocol.decode_image(decoded)
            assert image.shape == (decoded.header.height, decoded.header.width, 3)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)  # one line for the user


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its start-of-frame marker claiming another size."""
    sof = jpeg.find(b"\xff\xc0")
    assert sof > 0
    patched = bytearray(jpeg)
    patched[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(patched)


# --- the message decoder ----------------------------------------------------

def test_good_message_round_trips() -> None:
    # the fuzzing below means something only if a valid message does decode
    decoded = protocol.decode(GOOD_MESSAGE)
    assert decoded.header.seq == 7 and decoded.stream == "cam0"
    assert protocol.decode_image(decoded).shape == (12, 16, 3)


@FUZZ
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\x00")
@example(b"cam0\x00{}\x00")
@example(b"cam0\x00[]\x00x")
@example(b"cam0\x00" + b"[" * 5000 + b"\x00x")
def test_decoder_arbitrary_bytes(data: bytes) -> None:
    decode_fully(data)


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.binary(), max_size=4),
                 st.tuples(st.binary(), st.binary())))
def test_decoder_wrong_types_and_part_counts(message: object) -> None:
    # a multipart message handed over as a list of parts is a malformed message too
    with pytest.raises(ProtocolError):
        protocol.decode(message)  # type: ignore[arg-type]


@FUZZ
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=6))
def test_decoder_parts_joined_or_split(parts: list[bytes]) -> None:
    # the frames of a multipart message, each decoded alone or glued together
    for part in parts:
        decode_fully(part)
    decode_fully(b"".join(parts))


@FUZZ
@given(st.integers(min_value=0, max_value=len(GOOD_MESSAGE) - 1),
       st.integers(min_value=0, max_value=len(GOOD_MESSAGE) - 1), st.integers(0, 255))
def test_decoder_truncated_or_flipped(cut: int, position: int, value: int) -> None:
    decode_fully(GOOD_MESSAGE[:cut])
    flipped = bytearray(GOOD_MESSAGE)
    flipped[position] = value
    decode_fully(bytes(flipped))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
HEADER_FIELDS = ["v", "stream", "seq", "capture_ns", "width", "height", "fps", "reset", "stages", "end", "reason"]


@FUZZ
@given(st.dictionaries(st.sampled_from(HEADER_FIELDS) | st.text(max_size=8), JSON_VALUES, max_size=12),
       st.sampled_from(["cam0", "", "a b", "x" * 70, "é"]))
def test_decoder_bad_headers(fields: dict, stream_id: str) -> None:
    base = {"v": 1, "stream": "cam0", "seq": 0, "capture_ns": 0, "width": 16, "height": 12,
            "fps": 25, "reset": False, "stages": {}}
    head = json.dumps({**base, **fields}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    decode_fully(stream_id.encode("utf-8") + b"\x00" + head + b"\x00" + JPEG)


@FUZZ
@given(st.binary(max_size=2048) | st.builds(lambda cut: JPEG[:cut], st.integers(0, len(JPEG)))
       | st.builds(lambda i, v: JPEG[:i] + bytes([v]) + JPEG[i + 1:],
                   st.integers(0, len(JPEG) - 1), st.integers(0, 255)))
def test_decoder_bad_jpeg(jpeg: bytes) -> None:
    decode_fully(protocol.encode_frame(HEADER, jpeg))


@pytest.mark.parametrize("width,height", [(16, 13), (1, 1), (65500, 65500)])
def test_jpeg_claiming_another_size_is_a_protocol_error(width: int, height: int) -> None:
    # 65500x65500 is past OpenCV's pixel limit: imdecode raises cv2.error, which must not escape
    message = protocol.decode(protocol.encode_frame(HEADER, with_jpeg_size(JPEG, width, height)))
    with pytest.raises(ProtocolError):
        protocol.decode_image(message)


# --- a real subscriber fed fuzzed messages over loopback ----------------------

@pytest.fixture(scope="module")
def pub_and_subscriber():
    """A PUB socket and a stream.subscribers.Subscriber connected to it (once per module:
    connecting per example would make the fuzzing slow)."""
    from stream.subscribers import Subscriber

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    subscriber = Subscriber(f"tcp://127.0.0.1:{port}", context=context)
    probe = protocol.encode_frame(HEADER, JPEG)
    for _ in range(400):  # PUB drops until the subscription arrives: send until one gets through
        pub.send(probe)
        if subscriber.receive(timeout_s=0.05) is not None:
            break
    else:
        pytest.fail("subscriber never connected")
    yield pub, subscriber
    subscriber.close()
    pub.close()
    context.term()


SENTINEL_SEQ = iter(range(10**6, 10**9))
GARBAGE = st.lists(st.binary(max_size=200) | st.just(GOOD_MESSAGE) | st.just(b"cam0\x00{}\x00"),
                   min_size=0, max_size=4)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(GARBAGE, min_size=1, max_size=8))
def test_subscriber_survives_fuzzed_messages(pub_and_subscriber, messages: list[list[bytes]]) -> None:
    pub, subscriber = pub_and_subscriber
    malformed_before = subscriber.malformed
    for parts in messages:
        if parts:
            pub.send_multipart(parts)
    seq = next(SENTINEL_SEQ)
    sentinel = FrameHeader(stream="sentinel", seq=seq, capture_ns=1, width=16, height=12, fps=25.0)
    pub.send(protocol.encode_frame(sentinel, JPEG))
    for message, image in subscriber.frames(timeout_s=20):  # in order: the garbage came first
        if message.stream == "sentinel" and message.header.seq == seq:
            assert image.shape == (12, 16, 3)
            break
    else:
        pytest.fail("the valid frame after the garbage never arrived")
    # every message of several parts is malformed, whatever its parts hold
    assert subscriber.malformed - malformed_before >= sum(1 for parts in messages if len(parts) > 1)


# --- the config loader ---------------------------------------------------------

CONFIG_KEYS = sorted(set(PipelineConfig.model_fields) | {
    "id", "webcam", "rtsp", "file", "folder", "fps", "loop", "realtime", "max_frames", "queue",
    "reconnect", "kind", "model", "short_side", "threads", "max_batch", "bind", "sndhwm",
    "security", "path", "codec", "width", "interval_s", "give_up_after_s"})
YAML_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                | st.sampled_from(["rtsp://127.0.0.1:8554/x", "tcp://127.0.0.1:5555", "x.mp4", "-1",
                                   "1e999", "nan", "out/{stream}.mp4", "{0}", "{stream"]))
YAML_TREES = st.recursive(
    YAML_SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=6) | st.integers(), children, max_size=5),
    max_leaves=20)


def load_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml") and "\n" not in str(exc)
    else:
        assert isinstance(config, PipelineConfig) and config.sources


def test_valid_config_loads() -> None:
    config = parse_config("sources:\n  - file: clip.mp4\n", "ok.yaml")
    assert config.sources[0].id == "clip"


@FUZZ
@given(st.text(max_size=400))
@example("sources: [")
@example("? [a]\n: b")
@example("!!python/object:os.system x")
@example("a: &x [*x]")
@example("sources:\n  - file: x\n    fps: 1e999")
@example("[" * 2000)
def test_config_arbitrary_text(text: str) -> None:
    load_or_config_error(text)


@FUZZ
@given(YAML_TREES)
def test_config_arbitrary_structures(tree: object) -> None:
    load_or_config_error(yaml.safe_dump(tree, allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(["id", "file", "rtsp", "webcam", "folder", "fps", "loop", "realtime",
                                        "max_frames", "queue", "width", "height", "reconnect"]),
                       YAML_SCALARS | st.lists(YAML_SCALARS, max_size=3), max_size=6),
       st.dictionaries(st.sampled_from(["engine", "state", "hints", "publish", "record", "window",
                                        "stats", "duration_s"]),
                       YAML_TREES, max_size=3))
def test_config_nearly_valid(source: dict, sections: dict) -> None:
    # one real-looking source keeps the loader past the first check and into every section
    tree = {"sources": [{"file": "clip.mp4", **source}], **sections}
    load_or_config_error(yaml.safe_dump(tree, allow_unicode=True))


@pytest.mark.parametrize("path", ["{stream:>4611686018427387904}", "{stream!r:^99}", "{0}", "{", "}{"])
def test_record_path_with_format_tricks(path: str) -> None:
    # str.format runs at load time; a huge width in a format spec must be a config error,
    # not a MemoryError (4611686018427387904 is far past any machine's memory)
    load_or_config_error(yaml.safe_dump({"sources": [{"file": "clip.mp4"}], "record": {"path": path}}))


def test_config_file_problems(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(ConfigError):
            load_config(path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError):
        load_config(binary)
