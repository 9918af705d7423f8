"""The wire format of published frames (the only module that knows it; see docs/protocol.md).

One message is ONE ZeroMQ frame (single-part, so a latest-only subscriber can use CONFLATE):

    TOPIC 0x00 HEADER 0x00 JPEG

TOPIC is the stream id (1-64 of A-Z a-z 0-9 _ . -, not starting with . or -). The 0x00 after it ends the topic, so a
subscription to b"cam1\\0" matches stream "cam1" and not "cam10". HEADER is a JSON object
(ASCII, so it never holds a 0x00 byte). JPEG is the colorized frame, baseline JPEG (BGR when
decoded by OpenCV). A stream's last message is an end message: its header has "end": true
and the JPEG part is empty.

`decode` raises ProtocolError, and nothing else, for any malformed message.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import cv2
import numpy as np

from stream.frame import FrameHeader, StreamEnd

VERSION = 1
SEPARATOR = b"\x00"
MAX_HEADER_BYTES = 65536
# a frame larger than this is refused before decoding (a tiny message can claim a huge
# picture); 8192x8192, about twice 8K UHD. Subscribers take --max-pixels to change it.
DEFAULT_MAX_PIXELS = 8192 * 8192
# a frame rate below this cannot be timed (a recorder's time base would overflow); 0 = unknown
MIN_FPS = 0.001
# not starting with . or -: an id is also a file name ({stream} in a record path), never . or ..
STREAM_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
STREAM_ID_RULE = "use 1-64 of A-Z a-z 0-9 _ . -, not starting with . or -"


class ProtocolError(ValueError):
    """A message that does not follow the wire format; the text says what is wrong."""


@dataclass(slots=True)
class Message:
    """A decoded message: either a frame (header + JPEG bytes) or the end of a stream."""

    stream: str
    header: FrameHeader | None
    jpeg: memoryview | None
    end: StreamEnd | None = None


def is_valid_stream_id(stream_id: str) -> bool:
    return isinstance(stream_id, str) and _STREAM_ID.fullmatch(stream_id) is not None


_TOPIC_PREFIX = re.compile(rb"[A-Za-z0-9_.\-]{0,64}|[A-Za-z0-9_.\-]{1,64}\x00")


def is_topic_prefix(prefix: bytes) -> bool:
    """Whether a subscription prefix can match some stream's topic (empty: every stream)."""
    return _TOPIC_PREFIX.fullmatch(prefix) is not None


def topic(stream_id: str) -> bytes:
    """The subscription prefix that matches exactly one stream."""
    if not is_valid_stream_id(stream_id):
        raise ProtocolError(f"invalid stream id {stream_id!r}: {STREAM_ID_RULE}")
    return stream_id.encode("ascii") + SEPARATOR


def encode_image(bgr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR (or grey) frame; OpenCV's libjpeg-turbo encoder releases the GIL."""
    ok, buf = cv2.imencode(".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, int(quality)))
    if not ok:
        raise ProtocolError(f"JPEG encoding failed for a frame of shape {bgr.shape}")
    return buf.tobytes()


def header_dict(header: FrameHeader) -> dict:
    return {"v": VERSION, "stream": header.stream, "seq": header.seq, "capture_ns": header.capture_ns,
            "width": header.width, "height": header.height, "fps": header.fps, "reset": header.reset,
            "stages": header.stages}


def encode_frame(header: FrameHeader, jpeg: bytes) -> bytes:
    head = json.dumps(header_dict(header), separators=(",", ":")).encode("ascii")
    return b"".join((topic(header.stream), head, SEPARATOR, jpeg))


def encode_end(stream_id: str, reason: str = "") -> bytes:
    head = json.dumps({"v": VERSION, "stream": stream_id, "end": True, "reason": reason},
                      separators=(",", ":")).encode("ascii")
    return b"".join((topic(stream_id), head, SEPARATOR))


def decode(message: bytes | bytearray | memoryview) -> Message:
    """Parse one message without decoding the JPEG (see decode_image)."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message must be bytes, not {type(message).__name__}")
    data = bytes(message) if not isinstance(message, bytes) else message
    first = data.find(SEPARATOR, 0, 66)
    if first < 1:
        raise ProtocolError("no stream id topic ending in 0x00 at the start of the message")
    second = data.find(SEPARATOR, first + 1, first + 2 + MAX_HEADER_BYTES)
    if second < 0:
        raise ProtocolError("no 0x00 after the header (or header longer than 64 KiB)")
    try:
        stream_id = data[:first].decode("ascii")
        fields = json.loads(data[first + 1:second].decode("ascii"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"header is not ASCII JSON: {str(exc).splitlines()[0][:120]}") from None
    if not is_valid_stream_id(stream_id):
        raise ProtocolError(f"invalid stream id in topic: {stream_id!r}")
    if not isinstance(fields, dict):
        raise ProtocolError("header is not a JSON object")
    if fields.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {fields.get('v')!r}; expected {VERSION}")
    if fields.get("stream") != stream_id:
        raise ProtocolError(f"header stream {fields.get('stream')!r} differs from topic {stream_id!r}")
    payload = memoryview(data)[second + 1:]
    if fields.get("end") is True:
        reason = fields.get("reason", "")
        return Message(stream_id, None, None, StreamEnd(stream_id, reason if isinstance(reason, str) else ""))
    header = _header_from_fields(stream_id, fields)
    if len(payload) == 0:
        raise ProtocolError("frame message has no JPEG data")
    return Message(stream_id, header, payload)


def _header_from_fields(stream_id: str, fields: dict) -> FrameHeader:
    def integer(key: str, minimum: int) -> int:
        value = fields.get(key)
        if type(value) is not int or value < minimum:
            raise ProtocolError(f"header field {key!r} must be an integer >= {minimum}, got {value!r}")
        return value

    fps = fields.get("fps")
    if type(fps) not in (int, float) or not (fps == 0 or MIN_FPS <= fps < 1e6):
        raise ProtocolError(f"header field 'fps' must be 0 (unknown) or a number from {MIN_FPS:g} "
                            f"to 1e6, got {fps!r}")
    stages = fields.get("stages", {})
    if not isinstance(stages, dict) or not all(type(v) is int for v in stages.values()):
        raise ProtocolError("header field 'stages' must map stage names to integer ns timestamps")
    reset = fields.get("reset", False)
    if not isinstance(reset, bool):
        raise ProtocolError(f"header field 'reset' must be true or false, got {reset!r}")
    return FrameHeader(stream=stream_id, seq=integer("seq", 0), capture_ns=integer("capture_ns", 0),
                       width=integer("width", 1), height=integer("height", 1), fps=float(fps),
                       reset=reset, stages=stages)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame (not DHT, JPG, DAC)


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, without decoding; None if the
    data is not a JPEG or has no start-of-frame before it ends."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            return (data[i + 7] << 8 | data[i + 8], data[i + 5] << 8 | data[i + 6])
        i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def decode_image(message: Message, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The frame's BGR pixels; ProtocolError if the JPEG is broken, not the header's size or
    more than `max_pixels` pixels (checked before anything is allocated)."""
    if message.jpeg is None or message.header is None:
        raise ProtocolError("an end message has no image")
    width, height = message.header.width, message.header.height
    if width * height > max_pixels:
        raise ProtocolError(f"frame of {width}x{height} is over the limit of {max_pixels} pixels "
                            "(--max-pixels)")
    # check the size before decoding: a tiny message claiming a huge picture must not make
    # the subscriber allocate and decode it (or trip OpenCV's pixel limit, a cv2.error)
    size = jpeg_size(message.jpeg)
    if size is None:
        raise ProtocolError("JPEG data cannot be decoded (no JPEG start-of-frame marker)")
    if size != (message.header.width, message.header.height):
        raise ProtocolError(f"JPEG is {size[0]}x{size[1]} but the header says "
                            f"{message.header.width}x{message.header.height}")
    try:
        image = cv2.imdecode(np.frombuffer(message.jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ProtocolError("JPEG data cannot be decoded")
    h, w = image.shape[:2]
    if (w, h) != (message.header.width, message.header.height):
        raise ProtocolError(f"JPEG is {w}x{h} but the header says "
                            f"{message.header.width}x{message.header.height}")
    return image
