"""Contact sheets: rows of image tiles under a column header, one titled section per set,
so that what users see can be looked at side by side (ground truth | grey | output ...)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

BACKGROUND = 255
TEXT = (40, 40, 40)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_HEIGHT = 26


def fit_tile(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit width×height (aspect kept), centred on the background."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if small.ndim == 2:
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    tile = np.full((height, width, 3), BACKGROUND, np.uint8)
    y, x = (height - size[1]) // 2, (width - size[0]) // 2
    tile[y:y + size[1], x:x + size[0]] = small
    return tile


def _label(width: int, text: str, scale: float = 0.5) -> np.ndarray:
    bar = np.full((TITLE_HEIGHT, width, 3), BACKGROUND, np.uint8)
    cv2.putText(bar, text, (6, TITLE_HEIGHT - 8), FONT, scale, TEXT, 1, cv2.LINE_AA)
    return bar


def contact_sheet(sections: dict[str, list[list[np.ndarray]]], columns: list[str],
                  tile_width: int = 240, tile_height: int = 160, gap: int = 4) -> np.ndarray:
    """One BGR image: per section a title bar, the column names, then one row of tiles per
    sample (each row has len(columns) images; a missing one is left blank)."""
    width = len(columns) * tile_width + (len(columns) + 1) * gap
    parts = []
    for title, rows in sections.items():
        parts.append(_label(width, title, 0.6))
        header = np.full((TITLE_HEIGHT, width, 3), BACKGROUND, np.uint8)
        for c, name in enumerate(columns):
            x = gap + c * (tile_width + gap)
            header[:, x:x + tile_width] = _label(tile_width, name, 0.45)
        parts.append(header)
        for row in rows:
            strip = np.full((tile_height + gap, width, 3), BACKGROUND, np.uint8)
            for c, image in enumerate(row[:len(columns)]):
                if image is not None:
                    x = gap + c * (tile_width + gap)
                    strip[:tile_height, x:x + tile_width] = fit_tile(image, tile_width, tile_height)
            parts.append(strip)
    if not parts:
        raise ValueError("a contact sheet needs at least one section")
    return np.vstack(parts)


def write_png(path: Path, image: np.ndarray) -> None:
    """PNG written under a temporary name and renamed: the final name is always complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)
