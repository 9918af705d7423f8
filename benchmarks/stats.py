"""Benchmark statistics: pure functions over the frame headers a subscriber received.

Every figure the benchmark reports is computed here from recorded timestamps, so it can
be checked on known inputs. Times are wall-clock nanoseconds (the frame header's clock);
durations are returned in milliseconds.

A frame's header carries its capture time and the time it left each stage, in pipeline
order (prep, batch, engine, publish). The latency between two consecutive stamps is a
"segment"; the engine and publish segments are split further:

    l_plane       capture → prep      the full-resolution L plane
    wait_engine   prep → batch        waiting in the stream's queue and for a fuller batch
    colour_maths  batch → engine      minus the network: resize and normalise into the batch
    network       (inside the engine) the network itself, timed around Engine.infer
    wait_output   engine → publish    waiting for the output thread (busy with earlier frames)
    publish       engine → publish    ab upsample + merge with full-resolution L, JPEG, send
                                      (a GPU engine merges inside the engine stage instead)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)
KEEP_UP_FPS_RATIO = 0.97  # a real-time case keeps up when it delivers this share of the source rate
KEEP_UP_DROP_RATIO = 0.01  # ... and drops at most this share of the frames read
KNEE_MIN_GAIN = 0.10  # throughput "still grows" while a step in streams adds at least this share
LATENCY_GOAL_MS = 100.0
SEED_RATIO_GOAL = 10.0
SEGMENTS = ("l_plane", "wait_engine", "colour_maths", "network", "wait_output", "publish")
SEGMENT_LABELS = {
    "l_plane": "L plane (capture → prep)",
    "wait_engine": "queue + batching (prep → batch)",
    "colour_maths": "network input (resize + normalise)",
    "network": "network (Engine.infer)",
    "wait_output": "waiting for the output thread",
    "publish": "merge + publish (upsample, Lab→BGR, JPEG, send)",
}


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One published frame as a subscriber saw it."""

    stream: str
    seq: int
    capture_ns: int
    stages: dict[str, int]
    received_ns: int = 0


@dataclass(frozen=True, slots=True)
class InferCall:
    """One Engine.infer call: the batch size and when it ran."""

    batch: int
    start_ns: int
    end_ns: int


@dataclass
class Breakdown:
    """Per-frame segment durations (ms), all arrays of one length, in SEGMENTS order."""

    segments: dict[str, np.ndarray] = field(default_factory=dict)
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def mean_ms(self) -> dict[str, float]:
        return {k: float(v.mean()) if len(v) else 0.0 for k, v in self.segments.items()}

    def shares(self) -> dict[str, float]:
        """Each segment's share of the mean end-to-end latency (they add up to 1)."""
        means = self.mean_ms()
        total = sum(means.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in means.items()}


def summarize(values: Iterable[float], percentiles: Sequence[int] = PERCENTILES) -> dict:
    """count, mean, min, max and the percentiles (linear interpolation) of `values`;
    the statistics are None when there are no values."""
    data = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.float64)
    out: dict = {"count": int(data.size)}
    if data.size == 0:
        out.update({"mean": None, "min": None, "max": None, **{f"p{q}": None for q in percentiles}})
        return out
    out.update({"mean": float(data.mean()), "min": float(data.min()), "max": float(data.max())})
    for q, v in zip(percentiles, np.percentile(data, percentiles)):
        out[f"p{q}"] = float(v)
    return out


def latencies_ms(records: Sequence[FrameRecord], stage: str = "publish") -> np.ndarray:
    """Capture → `stage` for each record that has that stamp."""
    return np.array([(r.stages[stage] - r.capture_ns) / 1e6 for r in records if stage in r.stages])


def delivery_ms(records: Sequence[FrameRecord]) -> np.ndarray:
    """Capture → received by the subscriber."""
    return np.array([(r.received_ns - r.capture_ns) / 1e6 for r in records if r.received_ns])


def in_window(records: Sequence[FrameRecord], start_ns: int, end_ns: int | None = None) -> list[FrameRecord]:
    """Records whose frame was captured in [start_ns, end_ns)."""
    return [r for r in records if r.capture_ns >= start_ns and (end_ns is None or r.capture_ns < end_ns)]


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def sequence_gaps(records: Sequence[FrameRecord]) -> dict[str, int]:
    """Per stream: sequence numbers missing between the first and last one received."""
    seqs: dict[str, list[int]] = {}
    for r in records:
        seqs.setdefault(r.stream, []).append(r.seq)
    return {s: (max(v) - min(v) + 1 - len(set(v))) for s, v in seqs.items()}


def serial_queue(arrivals_ns: np.ndarray, departures_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Waiting and service time (ns) of each job at a single FIFO server.

    A job departs at max(its arrival, the previous departure) + its service time, so both
    follow from the two stamps alone. Jobs are taken in order of departure; the arrays
    returned are in the order given."""
    order = np.argsort(departures_ns, kind="stable")
    arr, dep = arrivals_ns[order], departures_ns[order]
    previous = np.concatenate(([np.iinfo(np.int64).min], dep[:-1]))
    started = np.maximum(arr, previous)
    wait, service = np.empty_like(arr), np.empty_like(arr)
    wait[order], service[order] = started - arr, dep - started
    return wait, service


def match_calls(batch_ns: np.ndarray, engine_ns: np.ndarray, calls: Sequence[InferCall]) -> np.ndarray:
    """For each frame, the index of the infer call that ran inside its batch → engine interval
    (-1 when none did)."""
    if not calls:
        return np.full(len(batch_ns), -1)
    starts = np.array([c.start_ns for c in calls], np.int64)
    ends = np.array([c.end_ns for c in calls], np.int64)
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    index = np.searchsorted(starts, batch_ns, side="left")
    found = np.full(len(batch_ns), -1)
    ok = index < len(starts)
    ok[ok] = ends[index[ok]] <= engine_ns[ok]
    found[ok] = order[index[ok]]
    return found


def breakdown(records: Sequence[FrameRecord], calls: Sequence[InferCall] = ()) -> Breakdown:
    """The segments of every record carrying all four stamps (see the module docstring)."""
    full = [r for r in records if all(s in r.stages for s in ("prep", "batch", "engine", "publish"))]
    if not full:
        return Breakdown({k: np.zeros(0) for k in SEGMENTS}, np.zeros(0))
    cap = np.array([r.capture_ns for r in full], np.int64)
    prep, batch, engine, publish = (np.array([r.stages[s] for r in full], np.int64)
                                    for s in ("prep", "batch", "engine", "publish"))
    call = match_calls(batch, engine, calls)
    network = np.array([(calls[i].end_ns - calls[i].start_ns) if i >= 0 else 0 for i in call], np.int64)
    wait_out, publish_service = serial_queue(engine, publish)
    ms = 1e-6
    segments = {
        "l_plane": (prep - cap) * ms,
        "wait_engine": (batch - prep) * ms,
        "colour_maths": (engine - batch - network) * ms,
        "network": network * ms,
        "wait_output": wait_out * ms,
        "publish": publish_service * ms,
    }
    return Breakdown(segments, (publish - cap) * ms)


def union_ns(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length covered by possibly overlapping [start, end) intervals."""
    total, current_start, current_end = 0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def busy_fractions(records: Sequence[FrameRecord], calls: Sequence[InferCall], start_ns: int, end_ns: int,
                   decode_ms: float | None = None, frames_read: dict[str, int] | None = None) -> dict[str, float]:
    """How busy each serial worker was in [start_ns, end_ns) (1.0 = never idle), from all
    `records` of the run (a frame captured before the window may be worked on inside it).

    ingest: the busiest stream thread: each frame it read in the window (`frames_read`, which
    counts the frames dropped later too; else the records captured in the window) costs the
    decode time (measured apart) plus its stream's mean L-plane time. engine: the engine thread
    (batch → engine of each batch); network: Engine.infer alone; output: the output thread
    (merge, JPEG + send). Work that runs past the window's edges is cut at them."""
    full = [r for r in records if all(s in r.stages for s in ("prep", "batch", "engine", "publish"))]
    window_ns = end_ns - start_ns
    if window_ns <= 0 or not full:
        return {}

    def clipped(spans: Iterable[tuple[int, int]]) -> int:
        return union_ns((max(a, start_ns), min(b, end_ns)) for a, b in spans if b > start_ns and a < end_ns)

    l_plane: dict[str, list[int]] = {}
    for r in full:
        if start_ns <= r.capture_ns < end_ns:
            l_plane.setdefault(r.stream, []).append(r.stages["prep"] - r.capture_ns)
    ingest = 0.0
    for stream in set(l_plane) | set(frames_read or {}):
        spans = l_plane.get(stream, [])
        count = (frames_read or {}).get(stream, len(spans))
        per_frame_ns = (float(np.mean(spans)) if spans else 0.0) + (decode_ms or 0.0) * 1e6
        ingest = max(ingest, count * per_frame_ns / window_ns)
    # frames of one batch have overlapping batch → engine spans: their union is the thread's busy time
    engine_busy = clipped((r.stages["batch"], r.stages["engine"]) for r in full)
    network_busy = clipped((c.start_ns, c.end_ns) for c in calls)
    departures = np.array([r.stages["publish"] for r in full], np.int64)
    _, service = serial_queue(np.array([r.stages["engine"] for r in full], np.int64), departures)
    output_busy = clipped(zip((departures - service).tolist(), departures.tolist()))
    return {"ingest": min(1.0, ingest), "engine": engine_busy / window_ns,
            "network": network_busy / window_ns, "output": output_busy / window_ns}


def bottleneck(busy: dict[str, float]) -> str | None:
    """The busiest serial stage (the network is part of the engine stage, not a rival)."""
    rivals = {k: v for k, v in busy.items() if k != "network"}
    return max(rivals, key=rivals.get) if rivals else None


def keeps_up(fps: float, offered_fps: float, dropped: int, frames_in: int) -> bool:
    """A real-time case keeps up: it delivers (almost) the source rate and drops (almost) nothing."""
    drop_ratio = dropped / frames_in if frames_in else 0.0
    return fps >= KEEP_UP_FPS_RATIO * offered_fps and drop_ratio <= KEEP_UP_DROP_RATIO


def realtime_knee(rows: Sequence[tuple[int, bool]]) -> int | None:
    """The smallest stream count whose real-time case no longer keeps up; None if all do.
    `rows`: (streams, keeps_up) pairs."""
    failing = [n for n, ok in sorted(rows) if not ok]
    return failing[0] if failing else None


def throughput_knee(rows: Sequence[tuple[int, float]], min_gain: float = KNEE_MIN_GAIN) -> int | None:
    """The stream count after which adding streams adds less than `min_gain` of throughput;
    None when throughput still grows at the largest count. `rows`: (streams, total fps)."""
    rows = sorted(rows)
    for (n0, f0), (_, f1) in zip(rows, rows[1:]):
        if f0 <= 0 or (f1 - f0) / f0 < min_gain:
            return n0
    return None


def goal_check(fps: float, offered_fps: float, p99_ms: float | None, dropped: int,
               seed_ratio: float | None) -> dict:
    """The issue's goal for one real-time case: the source rate sustained, p99 under 100 ms,
    no drops, and at least 10x the seed approach's fps (None when not measured)."""
    checks = {
        "sustained": fps >= KEEP_UP_FPS_RATIO * offered_fps,
        "p99_under_100ms": p99_ms is not None and p99_ms < LATENCY_GOAL_MS,
        "no_drops": dropped == 0,
        "seed_ratio_10x": None if seed_ratio is None else seed_ratio >= SEED_RATIO_GOAL,
    }
    checks["met"] = all(v for v in checks.values() if v is not None) and seed_ratio is not None
    return checks
