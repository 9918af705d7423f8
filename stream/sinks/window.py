"""Live window sink: original | grey | colour side by side, one window per stream.

Clicking a point on any panel gives that point of the stream's current frame a colour
hint (the colour selected in the palette strip under the panels; keys 1-8 select too);
the pipeline feeds it with the next frame and the recurrent state carries it on. `c`
clears the hints of every stream (and the state that carries them), `+` and `-` make the
colours stronger or weaker (saturation, 0 to 2), `q` or Esc stops the pipeline.

OpenCV's GUI calls must come from one thread, the main one for Qt, so the pipeline's
main loop calls `pump()`; the output stage only drops frames into a small drop-oldest queue.
"""
from __future__ import annotations

import logging
import os
import re
import sys

import cv2
import imutils
import numpy as np

from engines.hints import Hint
from stream.config import WindowConfig
from stream.frame import Frame, StreamEnd
from stream.queues import BoundedQueue, Overflow

log = logging.getLogger("chromacast.window")

# BGR swatches a user picks hint colours from
PALETTE: tuple[tuple[int, int, int], ...] = (
    (40, 40, 200), (40, 140, 230), (60, 200, 230), (60, 170, 60),
    (170, 120, 40), (200, 60, 40), (150, 60, 140), (110, 150, 200))
PALETTE_HEIGHT = 28


def display_unavailable_reason() -> str | None:
    """None when OpenCV can open a window here; else why not, in one line."""
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return "this OpenCV build has no GUI support (install opencv-python, not -headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display for a window (DISPLAY is not set); run without the window"
    return None


def compose(frame: Frame, panel_width: int) -> np.ndarray:
    """original | grey (the L plane the network sees) | colour, each `panel_width` wide."""
    original = frame.image
    if original.dtype == np.uint16:
        original = (original >> 8).astype(np.uint8)
    if original.ndim == 2 or original.shape[2] == 1:
        original = cv2.cvtColor(original, cv2.COLOR_GRAY2BGR)
    elif original.shape[2] == 4:
        original = cv2.cvtColor(original, cv2.COLOR_BGRA2BGR)
    grey = cv2.cvtColor(frame.l8, cv2.COLOR_GRAY2BGR)
    panels = [imutils.resize(p, width=panel_width, inter=cv2.INTER_AREA) for p in (original, grey, frame.colour)]
    return np.hstack(panels)


# a click colours a patch of 3% of the short side: large enough for the network to spread the
# colour over the object, small enough to stay on it
CLICK_RADIUS = 0.03


def click_to_hint(x: int, y: int, panel_width: int, panel_height: int,
                  bgr: tuple[int, int, int]) -> Hint | None:
    """The hint for a click at window pixel (x, y): the same point of the frame whichever of
    the three panels was clicked; None below the panels (the palette strip)."""
    if y >= panel_height or panel_width <= 0:
        return None
    rel_x = (x % panel_width) / panel_width
    rel_y = y / panel_height
    return Hint.from_bgr(rel_x, rel_y, rel_x, rel_y, bgr, radius=CLICK_RADIUS)


def palette_index(x: int, width: int) -> int:
    return max(0, min(len(PALETTE) - 1, x // max(1, width // len(PALETTE))))


class StreamWindow:
    """One stream's window and its hint state."""

    def __init__(self, stream_id: str, panel_width: int, pipeline):
        self.stream_id, self.panel_width, self.pipeline = stream_id, panel_width, pipeline
        self.title = f"chromacast {stream_id}  (click: hint, 1-8: colour, c: clear, q: quit)"
        self.selected = 0
        self.points: list[tuple[float, float, tuple[int, int, int]]] = []
        self.panel_height = 0
        cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE)
        cv2.setMouseCallback(self.title, self.on_mouse)

    def show(self, frame: Frame) -> None:
        view = compose(frame, self.panel_width)
        self.panel_height = view.shape[0]
        for x, y, bgr in self.points:  # mark hints on the colour panel
            centre = (int((2 + x) * self.panel_width), int(y * self.panel_height))
            cv2.circle(view, centre, 6, bgr, -1)
            cv2.circle(view, centre, 7, (255, 255, 255), 1)
        cv2.imshow(self.title, np.vstack([view, self.palette_strip(view.shape[1])]))

    def palette_strip(self, width: int) -> np.ndarray:
        strip = np.zeros((PALETTE_HEIGHT, width, 3), np.uint8)
        swatch = width // len(PALETTE)
        for i, bgr in enumerate(PALETTE):
            x0 = i * swatch
            strip[:, x0:x0 + swatch] = bgr
            if i == self.selected:
                cv2.rectangle(strip, (x0 + 1, 1), (x0 + swatch - 2, PALETTE_HEIGHT - 2), (255, 255, 255), 2)
        return strip

    def on_mouse(self, event: int, x: int, y: int, _flags: int, _param) -> None:
        if event != cv2.EVENT_LBUTTONDOWN or not self.panel_height:
            return
        bgr = PALETTE[self.selected]
        hint = click_to_hint(x, y, self.panel_width, self.panel_height, bgr)
        if hint is None:  # the palette strip
            self.selected = palette_index(x, 3 * self.panel_width)
            return
        self.pipeline.add_hint(self.stream_id, hint)
        self.points.append((hint.x0, hint.y0, bgr))

    def on_key(self, key: int) -> None:
        if ord("1") <= key < ord("1") + len(PALETTE):
            self.selected = key - ord("1")
        elif key == ord("c"):
            self.pipeline.clear_hints(self.stream_id)
            self.points.clear()

    def close(self) -> None:
        cv2.destroyWindow(self.title)


class WindowSink:
    lossy = True

    def __init__(self, config: WindowConfig, pipeline, capacity: int = 2):
        reason = display_unavailable_reason()
        if reason:
            from stream.sinks.base import SinkError

            raise SinkError(f"window: {reason}")
        self.panel_width = config.width // 3
        self.pipeline = pipeline
        self.queue: BoundedQueue = BoundedQueue(capacity, Overflow.DROP_OLDEST, name="window")
        self.windows: dict[str, StreamWindow] = {}

    def pump(self) -> None:
        """Show what arrived (newest frame per stream) and handle keys; main thread only."""
        newest: dict[str, Frame] = {}
        while len(self.queue):
            item = self.queue.pop_nowait()
            if isinstance(item, StreamEnd):
                newest.pop(item.stream, None)
                window = self.windows.pop(item.stream, None)
                if window:
                    window.close()
            else:
                newest[item.stream] = item
        for stream_id, frame in newest.items():
            window = self.windows.get(stream_id)
            if window is None:
                window = self.windows[stream_id] = StreamWindow(stream_id, self.panel_width, self.pipeline)
            window.show(frame)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.pipeline.request_stop()
        elif key in (ord("+"), ord("="), ord("-")):  # colour strength, for every stream
            self.pipeline.adjust_saturation(0.1 if key != ord("-") else -0.1)
        elif key != 0xFF:  # OpenCV does not say which window has the focus: keys act on all
            for window in self.windows.values():
                window.on_key(key)

    def close(self) -> None:
        for window in self.windows.values():
            window.close()
        self.windows.clear()
        self.queue.close()
        cv2.waitKey(1)
