"""The work folder of a resumable file job, beside its output.

    .film.mp4.chromacast/          hidden, same file system as the output (atomic renames)
      job.json                     what the job is (input, model, settings); `complete` once all frames are in
      seg-00000.mp4, cmp-00000.mp4 finished segments (output, side-by-side), frames [k·N, (k+1)·N)
      state-00000.npz              recurrent state and position after segment k

A segment counts as finished only once its state file exists; both are written
under temporary names and renamed, so a job killed at any moment leaves either a
finished segment or nothing of it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


class WorkFolderError(RuntimeError):
    """The work folder cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class SegmentRecord:
    """Segment `number`: its first frame's timestamp, and where it ended (last frame's index,
    timestamp and time)."""

    number: int
    first_pts: int
    last_index: int
    last_pts: int
    last_time_s: float
    reorder_delays: dict[str, int] = field(default_factory=dict)  # per segment kind, from the encoder
    cuts: int = 0  # scene cuts from the first frame to this segment's end (a resumed run's summary)


def work_folder_for(output: Path) -> Path:
    return output.parent / f".{output.name}.chromacast"


def partial_name(output: Path) -> Path:
    """Temporary name beside `output` (same suffix, so the format is still known)."""
    return output.parent / f".{output.stem}.partial{output.suffix}"


class WorkFolder:
    def __init__(self, path: Path, job: dict):
        self.path = path
        self.job = job

    @classmethod
    def open(cls, output: Path, job: dict, resume: bool) -> "WorkFolder":
        """The work folder for `output`: reused when `resume` and it belongs to the same job."""
        path = work_folder_for(output)
        job = {"version": FORMAT_VERSION, **job}
        if path.exists() and not (path / "state-00000.npz").exists() and not _marked_complete(path):
            shutil.rmtree(path, ignore_errors=True)  # a run that stopped before its first segment: nothing to keep
        if path.exists():
            if not resume:
                raise WorkFolderError(f"an unfinished run of {output.name} is in {path}: add --resume to continue "
                                      f"it, or delete that folder to start over")
            old = cls._read_job(path)
            old_complete = old.pop("complete", False)
            if old != job:
                changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
                raise WorkFolderError(f"cannot resume {output.name}: the unfinished run in {path} used a different "
                                      f"{', '.join(_change(k, old.get(k), job.get(k)) for k in changed)}; "
                                      "delete that folder to start over")
            folder = cls(path, {**job, "complete": old_complete})
            folder._remove_temporaries()
            return folder
        try:
            path.mkdir()
        except OSError as exc:
            raise WorkFolderError(f"cannot write beside {output}: {exc.strerror or exc}") from None
        folder = cls(path, {**job, "complete": False})
        folder._write_job()
        return folder

    @staticmethod
    def _read_job(path: Path) -> dict:
        try:
            return json.loads((path / "job.json").read_text())
        except (OSError, ValueError):
            raise WorkFolderError(f"{path} is not a usable work folder (job.json missing or damaged); "
                                  f"delete it to start over") from None

    def _write_job(self) -> None:
        _write_atomic(self.path / "job.json", json.dumps(self.job, indent=1, sort_keys=True).encode())

    def _remove_temporaries(self) -> None:
        for p in self.path.glob("*.tmp*"):
            p.unlink()

    @property
    def complete(self) -> bool:
        return bool(self.job.get("complete"))

    def mark_complete(self) -> None:
        self.job["complete"] = True
        self._write_job()

    def segment_path(self, kind: str, number: int) -> Path:
        """kind: 'seg' (output) or 'cmp' (side by side)."""
        return self.path / f"{kind}-{number:05d}.mp4"

    def temp_segment_path(self, kind: str, number: int) -> Path:
        return self.path / f"{kind}-{number:05d}.tmp.mp4"

    def finished(self) -> list[SegmentRecord]:
        """Finished segments, 0, 1, 2... up to the first gap."""
        records = []
        while (p := self.path / f"state-{len(records):05d}.npz").exists():
            with np.load(p) as data:
                records.append(SegmentRecord(**json.loads(str(data["record"]))))
        return records

    def load_state(self, number: int) -> np.ndarray | None:
        with np.load(self.path / f"state-{number:05d}.npz") as data:
            return data["state"].copy() if "state" in data else None

    def load_extra(self, number: int) -> dict[str, np.ndarray]:
        """The other arrays saved with segment `number`'s state (e.g. the colour stabiliser's)."""
        with np.load(self.path / f"state-{number:05d}.npz") as data:
            return {k: data[k].copy() for k in data.files if k not in ("record", "state")}

    def finish_segment(self, record: SegmentRecord, state: np.ndarray | None, kinds: list[str],
                       extra: dict[str, np.ndarray] | None = None) -> None:
        """Rename the segment's files to their final names, then record its state (the commit point)."""
        for kind in kinds:
            _fsync(self.temp_segment_path(kind, record.number))
            os.replace(self.temp_segment_path(kind, record.number), self.segment_path(kind, record.number))
        buf = io.BytesIO()
        arrays = {"record": np.array(json.dumps(asdict(record)))}
        if state is not None:
            arrays["state"] = state
            arrays.update(extra or {})
        np.savez(buf, **arrays)
        _write_atomic(self.path / f"state-{record.number:05d}.npz", buf.getvalue())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _change(key: str, old: object, new: object) -> str:
    """'stabilise (0.85, now 0.5)'; values too long to read (hashes, plans) by name only."""
    if len(repr(old)) + len(repr(new)) > 60:
        return key
    return f"{key} ({json.dumps(old)}, now {json.dumps(new)})"


def _marked_complete(path: Path) -> bool:
    try:
        return bool(json.loads((path / "job.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
