"""The `--hints FILE` format: colour hints for chosen frames, validated, turned into engine Hints.

Format (JSON or YAML; docs/colorize.md has the full description):

    coordinates: relative        # relative (0..1 of width/height, default) or pixels
    hints:
      - frame: 0                 # frame number from 0, or `time:` seconds from the first frame
        points:
          - {x: 0.50, y: 0.30, colour: "#3a6ea5"}            # hex is #RRGGBB
          - {x: 0.20, y: 0.80, colour: [200, 40, 40], radius: 0.02}   # triplets are R, G, B
        boxes:
          - {box: [0.0, 0.0, 1.0, 0.25], colour: "#87ceeb"}  # x0, y0, x1, y1

pydantic does the validation (it is in the stack and names the failing field);
errors are turned into one line naming the entry and the problem.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from engines.hints import Hint
from stream.textdata import load_json, load_yaml

DEFAULT_RADIUS = 0.01  # of the short side, as engines.hints.Hint


class HintsError(ValueError):
    """The hints file is unreadable or invalid; the message is one line for the user."""


def _parse_colour(value: object) -> tuple[int, int, int]:
    """'#RRGGBB' / 'RRGGBB' or [R, G, B] (0..255) → (R, G, B)."""
    if isinstance(value, str):
        m = re.fullmatch(r"#?([0-9a-fA-F]{6})", value.strip())
        if not m:
            raise ValueError(f"colour {value!r} is not #RRGGBB hex or an [R, G, B] triplet")
        h = m.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
        return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(f"colour {value!r} is not #RRGGBB hex or an [R, G, B] triplet of integers 0..255")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PointSpec(_Strict):
    x: float = Field(ge=0)
    y: float = Field(ge=0)
    colour: tuple[int, int, int] = Field(validation_alias=AliasChoices("colour", "color"))
    radius: Optional[float] = Field(default=None, gt=0)

    @field_validator("colour", mode="before")
    @classmethod
    def _colour(cls, v: object) -> tuple[int, int, int]:
        return _parse_colour(v)


class BoxSpec(_Strict):
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int] = Field(validation_alias=AliasChoices("colour", "color"))

    @field_validator("colour", mode="before")
    @classmethod
    def _colour(cls, v: object) -> tuple[int, int, int]:
        return _parse_colour(v)

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = v
        if min(v) < 0 or x1 < x0 or y1 < y0:
            raise ValueError(f"box {list(v)} must be [x0, y0, x1, y1] with 0 <= x0 <= x1 and 0 <= y0 <= y1")
        return v


class EntrySpec(_Strict):
    frame: Optional[int] = Field(default=None, ge=0)
    time: Optional[float] = Field(default=None, ge=0)
    file: Optional[str] = None  # folder inputs: the file (name inside the input folder) it applies to
    points: list[PointSpec] = []
    boxes: list[BoxSpec] = []

    @model_validator(mode="after")
    def _complete(self) -> "EntrySpec":
        if (self.frame is None) == (self.time is None):
            raise ValueError("give exactly one of 'frame' or 'time'")
        if not self.points and not self.boxes:
            raise ValueError("no 'points' or 'boxes'")
        return self


class HintsSpec(_Strict):
    coordinates: Literal["relative", "pixels"] = "relative"
    hints: list[EntrySpec]

    @model_validator(mode="after")
    def _relative_in_range(self) -> "HintsSpec":
        if self.coordinates == "relative":
            for i, e in enumerate(self.hints):
                values = [v for p in e.points for v in (p.x, p.y)] + [v for b in e.boxes for v in b.box]
                if any(v > 1 for v in values):
                    raise ValueError(f"entry {i + 1}{_where(e)}: coordinates are relative (0..1) "
                                     f"but a value is {max(values):g}; set 'coordinates: pixels'?")
        return self


def _where(entry: EntrySpec | dict) -> str:
    get = entry.get if isinstance(entry, dict) else lambda k: getattr(entry, k, None)
    if isinstance(get("frame"), int):
        return f" (frame {get('frame')})"
    if isinstance(get("time"), (int, float)):
        return f" (time {get('time')}s)"
    return ""


def _error_line(path: Path, raw: object, exc: ValidationError) -> str:
    # a misspelt key also makes its correct spelling "missing": report the misspelling
    errors = exc.errors()
    # the first problem in the file, and how many more: every one is fixed in one pass
    others = [e for e in errors if not (e["type"] == "missing" and any(
        o["type"] == "extra_forbidden" and o["loc"][:-1] == e["loc"][:-1] for o in errors))]
    err = others[0]
    more = len(others) - 1
    return _one_error(path, raw, err) + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _one_error(path: Path, raw: object, err: dict) -> str:
    loc = list(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg, loc = f"unknown key {loc[-1]!r}", loc[:-1]
    elif err["type"] == "missing":
        msg, loc = f"{loc[-1]!r} is missing", loc[:-1]
    if len(loc) >= 2 and loc[0] == "hints" and isinstance(loc[1], int):
        entries = raw.get("hints") if isinstance(raw, dict) else None
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else {}
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[2:]).lstrip(".")
        where = f"entry {loc[1] + 1}{_where(entry if isinstance(entry, dict) else {})}"
        return f"hints file {path}: {where}{': ' + field if field else ''}: {msg}"
    field = ".".join(str(p) for p in loc)
    return f"hints file {path}: {field + ': ' if field else ''}{msg}"


@dataclass(frozen=True)
class HintsFile:
    """A validated hints file; `digest` identifies its content (a resumed run checks it)."""

    spec: HintsSpec
    digest: str
    path: Path

    def for_file(self, name: str | None) -> "FrameHints":
        """The hints that apply to one input: entries without `file`, plus those naming `name`."""
        chosen = [(i, e) for i, e in enumerate(self.spec.hints)
                  if e.file is None or (name is not None and e.file == name)]
        labels = {id(e): f"hints file {self.path}: entry {i + 1}{_where(e)}" for i, e in chosen}
        return FrameHints([e for _, e in chosen], self.spec.coordinates, labels)

    def named_files(self) -> set[str]:
        return {e.file for e in self.spec.hints if e.file is not None}


def load_hints(path: Path | str) -> HintsFile:
    """Read and validate a hints file (JSON by its .json suffix, YAML otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HintsError(f"cannot read hints file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HintsError(f"hints file {path} is not UTF-8 text") from None
    try:
        raw = load_json(text) if path.suffix.lower() == ".json" else load_yaml(text)
    except json.JSONDecodeError as exc:
        raise HintsError(f"hints file {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None)
        raise HintsError(f"hints file {path}: not valid YAML{where}{': ' + problem if problem else ''}") from None
    except ValueError as exc:  # too deep, or a JSON key given twice
        raise HintsError(f"hints file {path}: {exc}") from None
    if isinstance(raw, list):  # a bare list of entries, relative coordinates
        raw = {"hints": raw}
    if not isinstance(raw, dict):
        raise HintsError(f"hints file {path}: expected a mapping with a 'hints' list")
    try:
        spec = HintsSpec.model_validate(raw)
    except ValidationError as exc:
        raise HintsError(_error_line(path, raw, exc)) from None
    return HintsFile(spec, hashlib.sha256(text.encode()).hexdigest()[:16], path)


class FrameHints:
    """Which hints land on which frame.

    A `frame` entry lands on that frame. A `time` entry lands on the frame nearest
    to it: the frame at time t takes entries in (t_prev + d/2, t + d/2], with d the
    nominal frame duration, so a run that resumes mid-video places them the same way."""

    def __init__(self, entries: list[EntrySpec], coordinates: str, labels: dict[int, str] | None = None):
        self.coordinates = coordinates
        self._labels = labels or {}  # id(entry) -> "hints file X: entry N (frame F)", for messages
        self.by_frame: dict[int, list[EntrySpec]] = {}
        self.timed: list[EntrySpec] = sorted((e for e in entries if e.time is not None), key=lambda e: e.time)
        for e in entries:
            if e.frame is not None:
                self.by_frame.setdefault(e.frame, []).append(e)

    def __bool__(self) -> bool:
        return bool(self.by_frame or self.timed)

    def entries_for(self, index: int, time_s: float, prev_time_s: float | None,
                    frame_duration_s: float) -> list[EntrySpec]:
        half = 0.5 * frame_duration_s
        lo = float("-inf") if prev_time_s is None else prev_time_s + half
        timed = [e for e in self.timed if lo < e.time <= time_s + half]
        return self.by_frame.get(index, []) + timed

    def hints_for(self, index: int, time_s: float, prev_time_s: float | None, frame_duration_s: float,
                  width: int, height: int) -> list[Hint] | None:
        """engines.hints.Hint list for one frame of size width×height, or None."""
        entries = self.entries_for(index, time_s, prev_time_s, frame_duration_s)
        if not entries:
            return None
        return [h for e in entries for h in to_engine_hints(e, self.coordinates, width, height)]

    def check_frame_size(self, width: int, height: int) -> None:
        """Raise HintsError now, not mid-video, if a pixel-coordinate hint lies outside the frame."""
        for entries in [*self.by_frame.values(), self.timed]:
            for e in entries:
                try:
                    to_engine_hints(e, self.coordinates, width, height)
                except HintsError as exc:
                    raise HintsError(f"{self._labels.get(id(e), 'hints')}: {exc}") from None

    def count_after(self, last_index: int, last_time_s: float, frame_duration_s: float) -> int:
        """How many entries fall after the last frame (never used)."""
        late = sum(len(v) for k, v in self.by_frame.items() if k > last_index)
        return late + sum(1 for e in self.timed if e.time > last_time_s + 0.5 * frame_duration_s)


def to_engine_hints(entry: EntrySpec, coordinates: str, width: int, height: int) -> list[Hint]:
    """One entry's points and boxes as frame-relative engine Hints (colours converted to Lab ab)."""
    sx, sy = (1.0 / width, 1.0 / height) if coordinates == "pixels" else (1.0, 1.0)
    radius_scale = 1.0 / min(width, height) if coordinates == "pixels" else 1.0
    if coordinates == "pixels":
        coords = [v for p in entry.points for v in (p.x / width, p.y / height)]
        coords += [v for b in entry.boxes for v in (b.box[0] / width, b.box[1] / height,
                                                    b.box[2] / width, b.box[3] / height)]
        if any(v > 1 for v in coords):
            raise HintsError(f"a point or box lies outside the {width}×{height} frame")
    out = []
    for p in entry.points:
        r, g, b = p.colour
        radius = DEFAULT_RADIUS if p.radius is None else p.radius * radius_scale
        out.append(Hint.from_bgr(p.x * sx, p.y * sy, p.x * sx, p.y * sy, (b, g, r), radius))
    for bx in entry.boxes:
        r, g, b = bx.colour
        x0, y0, x1, y1 = bx.box
        out.append(Hint.from_bgr(x0 * sx, y0 * sy, x1 * sx, y1 * sy, (b, g, r), 0.0))
    return out
