"""The parts of `chromacast colorize` on their own: hints file, scene cuts, background threads."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.background import BackgroundWorker, prefetch
from stream.hintsfile import HintsError, load_hints
from stream.scenecut import SceneCutDetector

ROOT = Path(__file__).resolve().parents[1]


def docs_example() -> str:
    text = (ROOT / "docs" / "colorize.md").read_text()
    return re.search(r"```yaml\n(.*?)```", text, re.S).group(1)


def test_documented_hints_example_is_valid(tmp_path):
    path = tmp_path / "hints.yaml"
    path.write_text(docs_example())
    hints = load_hints(path)
    assert len(hints.spec.hints) == 3 and hints.named_files() == {"reel2.mp4"}
    single = hints.for_file(None)  # `file:` entries apply only to that file of a folder
    assert sorted(single.by_frame) == [0] and len(single.timed) == 1
    assert 240 in hints.for_file("reel2.mp4").by_frame
    frame0 = single.hints_for(0, 0.0, None, 1 / 24, 640, 480)
    assert len(frame0) == 3
    sky = frame0[2]
    assert (sky.x0, sky.y0, sky.x1, sky.y1) == (0.0, 0.0, 1.0, 0.25) and sky.b < -10  # sky blue: b* < 0
    red = frame0[1]
    assert red.a > 30 and red.radius == 0.02


def test_documented_error_line(tmp_path):
    path = tmp_path / "reel1-hints.yaml"
    path.write_text(docs_example().replace('"#b03a2e"', '"#b03a2"'))
    with pytest.raises(HintsError) as err:
        load_hints(path)
    documented = re.search(r"chromacast colorize: error: (hints file .*)", (ROOT / "docs" / "colorize.md").read_text())
    assert str(err.value) == documented.group(1).replace("reel1-hints.yaml", str(path))


@pytest.mark.parametrize("text, expected", [
    ("hints: [{frame: 1}]", "entry 1 (frame 1): no 'points' or 'boxes'"),
    ("hints: [{frame: 1, time: 2, points: [{x: 0.1, y: 0.1, colour: '#ffffff'}]}]", "exactly one of 'frame' or 'time'"),
    ("hints: [{time: 2.5, points: [{x: 1.5, y: 0.1, colour: '#ffffff'}]}]", "entry 1 (time 2.5s): coordinates are relative"),
    ("hints: [{frame: 0, boxes: [{box: [0.5, 0, 0.2, 1], colour: '#ffffff'}]}]", "boxes[0].box"),
    ("hints: [{frame: 0, points: [{x: 0.5, y: 0.1, colr: '#ffffff'}]}]", "points[0]: unknown key 'colr'"),
    ("hints: [{frame: 0, points: [{x: 0.5, y: 0.1, colour: [1, 2, 300]}]}]", "triplet of integers 0..255"),
    ("hints: [{frame: -3, points: [{x: 0.5, y: 0.1, colour: '#ffffff'}]}]", "entry 1 (frame -3): frame:"),
    ("coordinates: cm\nhints: []", "coordinates:"),
    ("[1, 2", "not valid YAML"),
])
def test_hints_errors_name_entry_and_problem(tmp_path, text, expected):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(HintsError) as err:
        load_hints(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_pixel_hints_and_times(tmp_path):
    path = tmp_path / "h.json"
    path.write_text('{"coordinates": "pixels", "hints": ['
                    '{"time": 1.0, "points": [{"x": 320, "y": 120, "colour": [0, 0, 255], "radius": 24}]},'
                    '{"frame": 2, "boxes": [{"box": [0, 0, 640, 480], "color": "00ff00"}]}]}')
    fh = load_hints(path).for_file(None)
    d = 1 / 25
    landed = [i for i in range(50) if fh.entries_for(i, i * d, (i - 1) * d if i else None, d)]
    assert landed == [2, 25]  # the frame entry, and time 1.0 s on frame 25 exactly once
    point = fh.hints_for(25, 1.0, 0.96, d, 640, 480)[0]
    assert (point.x0, point.y0, point.radius) == (0.5, 0.25, 0.05)
    with pytest.raises(HintsError) as err:
        fh.check_frame_size(200, 100)
    assert str(err.value) == f"hints file {path}: entry 2 (frame 2): a point or box lies outside the 200×100 frame"


def scene(kind: str, shift: int) -> np.ndarray:
    yy, xx = np.mgrid[0:240, 0:320]
    if kind == "street":
        img = (60 + 100 * (np.sin((xx + shift) / 15.0) > 0) + 40 * yy / 240).astype(np.uint8)
    else:
        img = (220 - 180 * np.hypot(xx - 160 - shift, yy - 120) / 200).clip(0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)


def test_scene_cuts_found_and_motion_ignored():
    frames = [scene("street", 4 * i) for i in range(6)] + [scene("room", 3 * i) for i in range(6)]
    detector = SceneCutDetector()
    cuts = [i for i, f in enumerate(frames) if detector.update(f)]
    assert cuts == [6]
    off = SceneCutDetector(threshold=0)
    assert not any(off.update(f) for f in frames)


def test_prefetch_and_worker_keep_order_and_pass_errors():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("decode failed")

    with pytest.raises(ValueError, match="decode failed"):
        list(prefetch(failing()))

    seen, threads = [], set()
    worker = BackgroundWorker(lambda x: (seen.append(x), threads.add(threading.current_thread().name)), depth=2)
    for i in range(50):
        worker.submit(i)
    worker.close()
    assert seen == list(range(50)) and threads == {"worker"}

    def boom(x):
        raise OSError("disk full")

    worker = BackgroundWorker(boom)
    worker.submit(1)
    with pytest.raises(OSError, match="disk full"):
        worker.close()


def _dirty_heap(byte: int) -> None:
    """Leave freed heap blocks full of `byte`, so a read of uninitialised memory shows."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    for size in (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22):
        blocks = [libc.malloc(size) for _ in range(64)]
        for b in blocks:
            ctypes.memset(b, byte, size)
        for b in blocks:
            libc.free(b)


def test_segment_encoding_repeats_exactly(tmp_path):
    """A resumed film re-encodes segments in a new process: the encoder must not depend on
    anything but its frames (x264's mb-tree did: it read uninitialised memory)."""
    import hashlib
    from fractions import Fraction

    import av

    from stream.videoencode import EncodeSettings, SegmentEncoder, plan_encoding
    from stream.videofile import VideoInfo

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs glibc's heap (Linux) to make freed memory dirty")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:240, 0:320]
    frames = [cv2.cvtColor(((np.sin((xx + 4 * i) / 9) * 60 + 100 + yy / 4).astype(np.uint8)), cv2.COLOR_GRAY2BGR)
              + rng.integers(0, 3, (240, 320, 1), dtype=np.uint8) for i in range(30)]
    info = VideoInfo(320, 240, Fraction(1, 12800), Fraction(25), 30, 0, 2, 0)
    plan = plan_encoding(Path("out.mp4"), EncodeSettings(), 320, 240, info.rate)

    def encode() -> str:
        enc = SegmentEncoder(tmp_path / "seg.mp4", plan, info, 320, 240)
        for k, f in enumerate(frames):
            enc.write(f, k * 512, 512)
        enc.close()
        with av.open(str(tmp_path / "seg.mp4")) as c:
            return hashlib.sha256(b"".join(bytes(p) for p in c.demux(video=0))).hexdigest()

    digests = []
    for byte in (0x00, 0xAB, 0x5C, 0xFF, 0x13):
        _dirty_heap(byte)
        digests.append(encode())
    assert len(set(digests)) == 1
