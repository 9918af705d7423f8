"""Make stream/samples/sample.mp4: the short greyscale clip that `make run` colorizes.

Four public-domain / CC0 photographs that ship inside the scikit-image wheel (see
ATTRIBUTION.md), each shown for 1.5 s with a slow pan and zoom, converted to grey and
encoded as H.264 (4:2:0, neutral chroma) at 24 fps, 512x288.

    .venv/bin/pip install scikit-image   # only this script needs it
    .venv/bin/python stream/samples/make_sample.py
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

WIDTH, HEIGHT, FPS, SECONDS_PER_IMAGE = 512, 288, 24, 1.5
IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
OUT = Path(__file__).with_name("sample.mp4")


def pan_zoom(grey: np.ndarray, t: float, direction: int) -> np.ndarray:
    """Crop of `grey` at time t in [0, 1]: zooming in from 100% to 85% of the largest 16:9 crop
    while sliding sideways, resized to the clip size."""
    h, w = grey.shape
    base_w = min(w, h * WIDTH / HEIGHT)
    crop_w = base_w * (1.0 - 0.15 * t)
    crop_h = crop_w * HEIGHT / WIDTH
    slack_x, slack_y = w - crop_w, h - crop_h
    x0 = slack_x * (0.5 + direction * (t - 0.5) * 0.8)
    y0 = slack_y * 0.5
    scale = WIDTH / crop_w
    matrix = np.float32([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
    return cv2.warpAffine(grey, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def main() -> None:
    container = av.open(str(OUT), "w")
    stream = container.add_stream("libx264", rate=Fraction(FPS), options={"crf": "27", "preset": "slow"})
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    frames_per_image = int(FPS * SECONDS_PER_IMAGE)
    pts = 0
    for index, name in enumerate(IMAGES):
        rgb = getattr(data, name)()
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        for i in range(frames_per_image):
            frame = av.VideoFrame.from_ndarray(pan_zoom(grey, i / (frames_per_image - 1), 1 - 2 * (index % 2)),
                                               format="gray")
            frame.pts = pts
            pts += 1
            container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    print(f"{OUT}: {pts} frames, {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
