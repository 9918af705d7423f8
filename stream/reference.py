"""Reference images for colorize and pipelines: `--reference`, `--references FILE`, `reference: auto`.

A references file (YAML or JSON) gives frame or time ranges, each with its reference image
(paths relative to the file); ranges are inclusive, ordered and do not overlap:

    references:
      - {frames: [0, 239], image: reel1-shot1.jpg}
      - {frames: [240, 899], image: reel1-frame240-painted.png}

or `time: [start_s, end_s]` in place of `frames` (one kind in a file). Frames outside every
range take no reference. Every image is loaded and checked before any work.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from engines.reference import (STRIDE, FeatureModel, Match, ReferenceError, ReferenceMatcher,  # noqa: F401
                               is_colour, load_reference)

log = logging.getLogger("chromacast.reference")

LIVE_MATCH_EVERY = 2  # a pipeline stream is matched on every 2nd frame (the match costs about a network run)


@dataclass
class _Range:
    start: float
    end: float
    path: Path
    matcher: ReferenceMatcher


class References:
    """Which reference applies to which frame of one input (one image, or ranges of a file)."""

    def __init__(self, ranges: list[_Range], by_time: bool, digest: str):
        self.ranges, self.by_time, self.digest = ranges, by_time, digest

    def matcher_for(self, index: int, time_s: float) -> ReferenceMatcher | None:
        at = time_s if self.by_time else index
        for r in self.ranges:
            if r.start <= at <= r.end:
                return r.matcher
        return None

    def match(self, index: int, time_s: float, l_net: np.ndarray) -> Match | None:
        matcher = self.matcher_for(index, time_s)
        return matcher.match(l_net) if matcher else None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def single_reference(path: Path, features: FeatureModel) -> References:
    """One reference image for every frame."""
    image = load_reference(path)
    return References([_Range(0, float("inf"), path, ReferenceMatcher(image, features))], False,
                      _digest(path.read_bytes()))


def load_references(path: Path, features: FeatureModel) -> References:
    """A references file, validated, with its images loaded; ReferenceError (one line) if not usable."""
    where = f"references file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReferenceError(f"cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ReferenceError(f"{where} is not UTF-8 text") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError):
        raise ReferenceError(f"{where}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}") from None
    entries = raw.get("references") if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise ReferenceError(f"{where}: expected a non-empty 'references' list")
    kinds, spans = set(), []
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict) or set(e) - {"frames", "time", "image"} or "image" not in e \
                or len({"frames", "time"} & set(e)) != 1:
            raise ReferenceError(f"{where}: entry {i}: give 'image' and exactly one of 'frames' or 'time' "
                                 f"as [start, end]")
        kind = "frames" if "frames" in e else "time"
        span = e[kind]
        numeric = (int,) if kind == "frames" else (int, float)
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, numeric) and not isinstance(v, bool)
                                                                  and v >= 0 for v in span) and span[0] <= span[1]):
            raise ReferenceError(f"{where}: entry {i}: {kind} {span!r} is not [start, end] with 0 <= start <= end")
        if spans and span[0] <= spans[-1][1]:
            what = "overlaps" if span[0] >= spans[-1][0] else "comes before"
            raise ReferenceError(f"{where}: entry {i}: {kind} {span} {what} entry {i - 1}'s {spans[-1]}; "
                                 f"ranges must be ordered and must not overlap")
        kinds.add(kind)
        spans.append(span)
    if len(kinds) > 1:
        raise ReferenceError(f"{where}: use 'frames' or 'time' for every entry, not both")
    ranges, parts, images = [], [text.encode()], {}
    for e, (start, end) in zip(entries, spans):
        image_path = (path.parent / str(e["image"])) if not Path(str(e["image"])).is_absolute() else Path(e["image"])
        try:
            if image_path not in images:
                images[image_path] = ReferenceMatcher(load_reference(image_path), features)
                parts.append(image_path.read_bytes())
        except ReferenceError as exc:
            raise ReferenceError(f"{where}: {exc}") from None
        ranges.append(_Range(float(start), float(end), image_path, images[image_path]))
    return References(ranges, kinds == {"time"}, _digest(*parts))


class AutoReference:
    """`reference: auto` for one fixed camera: colour frames pass through and become the
    reference; grey frames are colorized with the last colour frame."""

    def __init__(self, stream: str, features: FeatureModel):
        self.stream, self.features = stream, features
        self.last_colour: np.ndarray | None = None
        self.matcher: ReferenceMatcher | None = None
        self.in_colour: bool | None = None
        self.switches = 0

    def observe(self, image: np.ndarray) -> bool:
        """Whether `image` is in colour (it then passes through); logs and counts each switch."""
        colour_now = image.ndim == 3 and image.shape[2] >= 3 and is_colour(image)
        if self.in_colour is not None and colour_now != self.in_colour:
            self.switches += 1
            log.info("%s: camera switched to %s (%s)", self.stream, "colour" if colour_now else "grey",
                     "passed through, kept as the reference" if colour_now else
                     ("colorized with the last colour frame" if self.last_colour is not None
                      else "no colour frame yet: colorized without a reference"))
        self.in_colour = colour_now
        if colour_now:
            self.last_colour, self.matcher = image, None  # features only when a grey frame needs them
        return colour_now

    def match(self, l_net: np.ndarray) -> Match | None:
        if self.last_colour is None:
            return None
        if self.matcher is None:
            bgr = self.last_colour[:, :, :3]
            if bgr.dtype == np.uint16:
                bgr = (bgr >> 8).astype(np.uint8)
            self.matcher = ReferenceMatcher(np.ascontiguousarray(bgr), self.features)
        return self.matcher.match(l_net)


class StreamReferences:
    """The references of a pipeline's streams: a fixed image (`reference: PATH`) or `auto`."""

    def __init__(self, sources: dict[str, str], threads: int | None = None):
        features = FeatureModel(threads=threads)
        self.auto: dict[str, AutoReference] = {}
        self.fixed: dict[str, References] = {}
        for stream, value in sources.items():
            if value == "auto":
                self.auto[stream] = AutoReference(stream, features)
            else:
                try:
                    self.fixed[stream] = single_reference(Path(value), features)
                except ReferenceError as exc:
                    raise ReferenceError(f"{stream}: {exc}") from None
        self.passed = {s: 0 for s in self.auto}  # colour frames passed through, per auto stream
        self._restart: set[str] = set()
        self._last: dict[str, tuple[int, Match | None]] = {}  # stream -> (frames since matched, match)

    def passes_through(self, stream: str, image: np.ndarray) -> bool:
        """An `auto` stream's colour frame: shown as it came; the next grey frame starts afresh."""
        auto = self.auto.get(stream)
        if auto is None or not auto.observe(image):
            return False
        self.passed[stream] += 1
        self._restart.add(stream)
        self._last.pop(stream, None)
        return True

    def restarts(self, stream: str) -> bool:
        """Whether this (grey) frame follows colour frames, so its state must start from zero."""
        if stream in self._restart:
            self._restart.discard(stream)
            return True
        return False

    def match(self, stream: str, l_net: np.ndarray) -> Match | None:
        age, last = self._last.get(stream, (LIVE_MATCH_EVERY, None))
        if age + 1 < LIVE_MATCH_EVERY and (last is None or last.mask.shape == tuple(s // STRIDE for s in l_net.shape)):
            self._last[stream] = (age + 1, last)
            return last
        if stream in self.auto:
            last = self.auto[stream].match(l_net)
        else:
            refs = self.fixed.get(stream)
            last = refs.match(0, 0.0, l_net) if refs else None
        self._last[stream] = (0, last)
        return last

    def summary(self) -> str:
        return "; ".join(f"{s}: {a.switches} switch{'es' if a.switches != 1 else ''}, "
                         f"{self.passed[s]} colour frames passed through" for s, a in self.auto.items())
