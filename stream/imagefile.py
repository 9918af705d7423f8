"""Colorize one image file: size, format, bit depth and alpha kept.

OpenCV reads and writes the images (it is in the stack and handles PNG, JPEG,
TIFF, BMP, WebP, 8/16-bit, grey/colour/alpha). 8-bit images go through the
engine's own colorize; 16-bit images keep their precision: the network sees the
8-bit L, and its ab is merged with the image's own 16-bit L in float.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from engines import colour
from engines.backend import Engine
from engines.hints import Hint, rasterise
from engines.reference import blend
from stream.hintsfile import FrameHints
from stream.workfolder import partial_name

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".pgm", ".ppm",
                  ".pnm", ".pbm"}
NO_ALPHA_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".pgm", ".ppm", ".pnm", ".pbm"}
EIGHT_BIT_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".bmp", ".webp", ".pbm"}


class ImageFileError(RuntimeError):
    """An image cannot be read or written; the message is one line for the user."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def colorize_image(src: Path, dst: Path, engine: Engine, short_side: int | None = None,
                   hints: FrameHints | None = None, saturation: float = 1.0, reference=None) -> str:
    """Colorize `src` into `dst` (written under a temporary name, then renamed); returns a summary."""
    if not src.exists():
        raise ImageFileError(f"input not found: {src}")
    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageFileError(f"cannot read image {src}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageFileError(f"{src}: {image.dtype} images are not supported (8 or 16 bits per channel)")
    h, w = image.shape[:2]
    alpha = image[:, :, 3] if image.ndim == 3 and image.shape[2] == 4 else None
    l8 = colour.to_l8(image)
    size = engine.network_size(w, h, short_side)
    if hints:
        hints.check_frame_size(w, h)
    frame_hints = hints.hints_for(0, 0.0, None, 1.0, w, h) if hints else None
    # `reference` (stream.reference.References): its frame-0 colours as hints, laid over the output
    match = reference.match(0, 0.0, colour.network_l8(l8, size)) if reference else None
    if match is not None:
        frame_hints = ([match.hint()] if match.mask.any() else []) + (frame_hints or []) or None
    if image.dtype == np.uint8 and match is None and (saturation == 1.0 or engine.merges_on_device):
        out = engine.colorize([l8], [engine.new_state(size)], [frame_hints] if frame_hints else None)[0]
    elif image.dtype == np.uint8:
        out = engine.merge(l8, colour.scale_chroma(_predict_ab(engine, l8, size, frame_hints, match), saturation))
    else:
        ab = colour.scale_chroma(_predict_ab(engine, l8, size, frame_hints, match), saturation)
        out = merge_16bit(image[:, :, :3] if alpha is not None else image, ab)
    if alpha is not None and dst.suffix.lower() not in NO_ALPHA_SUFFIXES:
        out = np.dstack([out, alpha])
    if out.dtype == np.uint16 and dst.suffix.lower() in EIGHT_BIT_SUFFIXES:
        out = (out >> 8).astype(np.uint8)
    _write(dst, out)
    depth = "16-bit" if out.dtype == np.uint16 else "8-bit"
    note = "; the input already had colour (its colours are replaced)" if _has_colour(image) else ""
    return f"{w}×{h} {depth}{' with alpha' if out.ndim == 3 and out.shape[2] == 4 else ''}{note}"


def _has_colour(image: np.ndarray) -> bool:
    """Whether the channels of a BGR(A) image differ beyond what compression leaves in a grey one."""
    if image.ndim == 2 or image.shape[2] < 3:
        return False
    bgr = image[:, :, :3].astype(np.int32)
    spread = bgr.max(axis=2) - bgr.min(axis=2)
    return float(np.mean(spread > (8 if image.dtype == np.uint8 else 2048))) > 0.01


def _predict_ab(engine: Engine, l8: np.ndarray, size: tuple[int, int], hints: list[Hint] | None,
                match=None) -> np.ndarray:
    """The network's ab (2×h×w, Lab units) for one frame, as Engine.colorize computes it
    (with a reference `match` laid over it)."""
    w, h = size
    batch = colour.l8_to_network(l8, size)[None, None]
    hint_ab = hint_mask = None
    if hints:
        ab, mask = rasterise(hints, w, h)
        hint_ab, hint_mask = ab[None], mask[None]
    ab = engine.infer(batch, [engine.new_state(size)], hint_ab, hint_mask)[0]
    return blend(ab, match) if match is not None else ab


def merge_16bit(image: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """16-bit BGR from a 16-bit grey or BGR image's own L and the network's low-resolution ab."""
    h, w = image.shape[:2]
    bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    lab = cv2.cvtColor(bgr.astype(np.float32) * np.float32(1 / 65535), cv2.COLOR_BGR2Lab)
    ab_full = cv2.resize(np.ascontiguousarray(ab.transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
    lab[:, :, 1:] = np.clip(ab_full, -127, 127)
    out = cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)
    return np.clip(out * 65535 + 0.5, 0, 65535).astype(np.uint16)


def _write(dst: Path, image: np.ndarray) -> None:
    tmp = partial_name(dst)
    try:
        ok = cv2.imwrite(str(tmp), image)
    except cv2.error as exc:
        ok = False
        reason = str(exc).strip().splitlines()[-1]
    else:
        reason = "OpenCV could not encode it"
    if not ok:
        tmp.unlink(missing_ok=True)
        raise ImageFileError(f"cannot write {dst}: {reason}")
    os.replace(tmp, dst)
