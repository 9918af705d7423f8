"""Captures on real files and folders, and the errors for inputs that cannot be opened."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import pattern_frame, read_video, write_video
from engines.colour import to_l8
from stream.config import SourceConfig
from stream.sources import SourceError, open_capture


def read_all(capture) -> list[np.ndarray]:
    frames = []
    while (image := capture.read()) is not None:
        frames.append(image)
    capture.close()
    return frames


def test_grey_video_is_read_as_grey_with_its_fps(tmp_path):
    path = write_video(tmp_path / "grey.mp4", frames=12, width=160, height=120, fps=30000 / 1001)
    capture = open_capture(SourceConfig(file=path))
    assert capture.fps == pytest.approx(29.97, abs=0.01)
    frames = read_all(capture)
    reference, _ = read_video(path)
    assert len(frames) == 12 and frames[0].shape == (120, 160)  # grey fast path: no colour conversion
    # the grey path's L matches the L of a full colour decode within rounding
    assert np.abs(to_l8(frames[5]).astype(int) - to_l8(reference[5])).max() <= 3


def test_colour_video_is_read_as_bgr(tmp_path):
    path = write_video(tmp_path / "colour.mp4", frames=6, width=96, height=64, colour=True)
    frames = read_all(open_capture(SourceConfig(file=path)))
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3)


def test_folder_reads_every_kind_of_image_and_skips_unreadable(tmp_path):
    base = pattern_frame(0, 33, 21)  # odd sizes
    cv2.imwrite(str(tmp_path / "01.png"), base)
    cv2.imwrite(str(tmp_path / "02.png"), base.astype(np.uint16) * 257)  # 16-bit grey
    cv2.imwrite(str(tmp_path / "03.png"), np.dstack([base, base, base, np.full_like(base, 255)]))  # BGRA
    (tmp_path / "04.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(tmp_path / "05.bmp"), np.dstack([base, base, base]))
    (tmp_path / "notes.txt").write_text("ignored")
    capture = open_capture(SourceConfig(folder=tmp_path, fps=12))
    frames = read_all(capture)
    assert capture.fps == 12 and capture.skipped == 1
    assert [f.dtype for f in frames] == [np.uint8, np.uint16, np.uint8, np.uint8]
    assert [f.shape[:2] for f in frames] == [(21, 33)] * 4
    ls = [to_l8(f).astype(int) for f in frames]
    assert all(np.abs(l - ls[0]).max() <= 3 for l in ls[1:])  # same picture, same L


@pytest.mark.parametrize("config, message", [
    ({"file": "missing.mp4"}, "video file not found"),
    ({"folder": "missing-folder"}, "image folder not found"),
    ({"webcam": 97}, "webcam 97"),
    ({"rtsp": "rtsp://127.0.0.1:1/none"}, "cannot open RTSP stream"),
])
def test_inputs_that_cannot_open_raise_source_error(tmp_path, monkeypatch, config, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=message):
        open_capture(SourceConfig(**config))


def test_not_a_video_and_empty_folder(tmp_path):
    (tmp_path / "text.mp4").write_text("hello")
    with pytest.raises(SourceError, match="cannot open video file"):
        open_capture(SourceConfig(file=tmp_path / "text.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_capture(SourceConfig(folder=tmp_path / "empty"))
