"""One benchmark case: the real pipeline on N copies of a greyscale clip, publishing over
ZeroMQ on loopback to one subscriber that receives every message.

Figures come from the frame headers the subscriber receives, over a window that starts
after a short warm-up (engine start-up and decoder start are not steady state) and ends
when the sources are told to stop; the frames already inside are drained and counted.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zmq
from pydantic import ValidationError

from benchmarks import stats
from benchmarks.clips import CACHE, SIZES, decode_ms_per_frame, make_clip
from benchmarks.stats import FrameRecord, InferCall
from engines.backend import Engine, open_engine
from stream import protocol
from stream.config import PipelineConfig, describe_error
from stream.frame import now_ns
from stream.pipeline import Pipeline, PipelineError
from stream.sources import SourceError

PROBE = b"bench.probe\x00"
SUBSCRIBE_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 10.0
PUBLISH_HWM = 10000  # the benchmark's subscriber must receive everything


class BenchError(RuntimeError):
    """A case that cannot run; str() is one line for the user. exit_code: 2 for bad input,
    1 for a pipeline that failed while running."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CaseSpec:
    streams: int = 1
    size: str = "720p"
    fps: float | None = 30.0  # source rate; None: the input files' own rate
    realtime: bool = True  # True: live behaviour (paced, drop-oldest); False: as fast as possible
    seconds: float = 6.0
    warmup_s: float = 1.0
    short_side: int | None = None  # None: the pipeline's default
    batch: int | None = None  # engine max batch; None: the pipeline's default
    stabiliser: float | None = None  # colour stabiliser strength; None: the pipeline's default
    threads: int | None = None
    engine: str = "auto"
    model: Path | None = None
    inputs: list[Path] = field(default_factory=list)  # given files (cycled over streams); empty: a clip
    vs_seed: bool = False
    seed_seconds: float = 5.0

    @property
    def mode(self) -> str:
        return "realtime" if self.realtime else "max"


class Subscriber(threading.Thread):
    """A SUB socket that receives every message of the run and keeps each frame's header."""

    def __init__(self, endpoint: str, streams: set[str]):
        super().__init__(name="bench-subscriber", daemon=True)
        self.endpoint, self.streams = endpoint, set(streams)
        self.records: list[FrameRecord] = []
        self.ended: set[str] = set()
        self.malformed = 0
        self.connected = threading.Event()
        self.probed = threading.Event()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, 0)  # never drop on this side
        socket.setsockopt(zmq.LINGER, 0)
        socket.subscribe(b"")
        socket.connect(self.endpoint)
        self.connected.set()
        try:
            while not self._stop_event.is_set() and not self.streams <= self.ended:
                if not socket.poll(100):
                    continue
                data = socket.recv(copy=True)
                received = now_ns()
                if data.startswith(PROBE):
                    self.probed.set()
                    continue
                try:
                    message = protocol.decode(data)
                except protocol.ProtocolError:
                    self.malformed += 1
                    continue
                if message.end is not None:
                    self.ended.add(message.stream)
                    continue
                h = message.header
                self.records.append(FrameRecord(h.stream, h.seq, h.capture_ns, dict(h.stages), received))
        finally:
            socket.close()
            context.term()


class InferTimer:
    """Times every Engine.infer call of one engine (batch size, start, end), so the engine
    stage's latency splits into the network and the colour maths around it. It shadows the
    bound method on this engine instance only; `remove` restores it."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.calls: list[InferCall] = []
        self._infer = engine.infer
        engine.infer = self._timed  # type: ignore[method-assign]

    def _timed(self, L, states, *args, **kwargs):
        start = now_ns()
        out = self._infer(L, states, *args, **kwargs)
        self.calls.append(InferCall(len(L), start, now_ns()))
        return out

    def remove(self) -> None:
        self.engine.__dict__.pop("infer", None)


def pipeline_config(spec: CaseSpec, inputs: list[Path]) -> PipelineConfig:
    sources = []
    for i in range(spec.streams):
        source: dict = {"id": f"s{i}", "file": str(inputs[i % len(inputs)]), "loop": True,
                        "realtime": spec.realtime}
        if spec.fps is not None:
            source["fps"] = spec.fps
        sources.append(source)
    engine = {k: v for k, v in (("kind", spec.engine), ("model", spec.model and str(spec.model)),
                                ("short_side", spec.short_side), ("max_batch", spec.batch),
                                ("threads", spec.threads)) if v is not None}
    data = {"sources": sources, "engine": engine, "stats": {"interval_s": 0},
            "state": {} if spec.stabiliser is None else {"stabiliser": {"strength": spec.stabiliser}},
            "publish": {"bind": "tcp://127.0.0.1:*", "sndhwm": PUBLISH_HWM, "linger_ms": 2000}}
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise BenchError(describe_error(exc)) from None


def case_inputs(spec: CaseSpec) -> list[Path]:
    if spec.inputs:
        missing = [str(p) for p in spec.inputs if not Path(p).is_file()]
        if missing:
            raise BenchError(f"video file not found: {missing[0]}")
        return [Path(p) for p in spec.inputs]
    if spec.size not in SIZES:
        raise BenchError(f"unknown size {spec.size!r}; expected one of {', '.join(SIZES)}")
    return [make_clip(*SIZES[spec.size], spec.fps or 30.0, folder=CACHE)]


def warm_up(engine: Engine, config: PipelineConfig, width: int, height: int, streams: int) -> None:
    """One call per batch size the run will see first: the engine's first run of a shape
    allocates, which is start-up, not throughput."""
    size = engine.network_size(width, height, config.engine.short_side)
    l8 = np.full((height, width), 128, np.uint8)
    for batch in sorted({1, min(streams, config.engine.max_batch)}):
        engine.colorize([l8] * batch, [engine.new_state(size) for _ in range(batch)])


def counters(pipeline: Pipeline) -> dict[str, dict[str, int]]:
    return {sid: {"in": s.frames_in, "out": s.frames_out, "dropped": s.dropped, "skipped": s.skipped}
            for sid, s in pipeline.stats.streams.items()}


def run_case(spec: CaseSpec, engine: Engine | None = None) -> dict:
    """Run one case and return its figures (see benchmarks/cli.py for what they mean)."""
    if spec.streams < 1 or spec.seconds <= 0 or spec.warmup_s < 0:
        raise BenchError("streams must be >= 1, seconds > 0 and warm-up >= 0")
    inputs = case_inputs(spec)
    config = pipeline_config(spec, inputs)
    seed_model = _seed_model() if spec.vs_seed else None  # before the run: fail early without torch
    try:
        decode_ms = {str(p): decode_ms_per_frame(p) for p in inputs}
    except SourceError as exc:
        raise BenchError(str(exc)) from None
    own_engine = engine is None
    if own_engine:
        try:
            engine = open_engine(config.engine.model, config.engine.kind, threads=config.engine.threads,
                               short_side=config.engine.short_side, max_batch=config.engine.max_batch)
        except Exception as exc:
            raise BenchError(str(exc).splitlines()[0]) from None
    try:
        result = _run_pipeline(spec, config, engine, inputs, decode_ms)
    finally:
        if own_engine:
            engine.close()
    if seed_model is not None:
        from benchmarks.seed import SeedError, measure_seed, read_bgr_frames

        try:
            seed = measure_seed(read_bgr_frames(inputs[0], 10), spec.seed_seconds, seed_model)
        except SeedError as exc:
            raise BenchError(str(exc)) from None
        seed["ratio"] = result["fps"]["sustained"] / seed["fps"] if seed["fps"] > 0 else None
        seed["pipeline_capped_by_source"] = spec.realtime
        result["seed"] = seed
    if spec.realtime:
        seed_ratio = result.get("seed", {}).get("ratio")
        result["goal"] = stats.goal_check(result["fps"]["sustained"], result["fps"]["offered"],
                                          result["latency_ms"]["p99"], result["frames"]["window"]["dropped"],
                                          seed_ratio)
    return result


def _seed_model() -> Path:
    from benchmarks.seed import SeedError, seed_model

    try:
        return seed_model()
    except SeedError as exc:
        raise BenchError(str(exc)) from None


def _run_pipeline(spec: CaseSpec, config: PipelineConfig, engine: Engine, inputs: list[Path],
                  decode_ms: dict[str, float | None]) -> dict:
    pipeline = Pipeline(config, engine)
    try:
        pipeline.open()
    except PipelineError as exc:
        raise BenchError(str(exc)) from None
    width, height = pipeline.sources[0].capture.stream.width, pipeline.sources[0].capture.stream.height
    warm_up(engine, config, width, height, spec.streams)
    timer = InferTimer(engine)
    subscriber = Subscriber(pipeline.endpoint, {s.id for s in config.sources})
    subscriber.start()
    try:
        _await_subscription(pipeline, subscriber)
        load_before = os.getloadavg()
        pipeline.start()
        pipeline.wait(timeout=spec.warmup_s)
        warm_ns, cpu0, snap0 = now_ns(), os.times(), counters(pipeline)
        pipeline.wait(timeout=spec.seconds)
        stop_ns, cpu1, snap1 = now_ns(), os.times(), counters(pipeline)
        pipeline.request_stop()
        pipeline.wait()
    finally:
        pipeline.close()
        timer.remove()
        subscriber.join(DRAIN_TIMEOUT_S)
        subscriber.stop()
        subscriber.join(1.0)
    if pipeline.error:
        raise BenchError(pipeline.error, exit_code=1)
    window_s = (stop_ns - warm_ns) / 1e9
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    engine_stage = pipeline.engine_stage
    return summarize_run(
        spec, subscriber.records, timer.calls, warm_ns, stop_ns, snap0, snap1, counters(pipeline),
        offered_fps=sum(s.fps for s in pipeline.sources) if spec.realtime else None,
        extra={
            "case": {**_case_fields(spec), "width": width, "height": height, "inputs": [str(p) for p in inputs],
                     "network_size": list(engine.network_size(width, height, config.engine.short_side)),
                     "short_side": config.engine.short_side, "max_batch": config.engine.max_batch,
                     "threads": config.engine.threads, "engine": engine.name,
                     "stabiliser": config.state.stabiliser.strength,
                     "source_fps": [s.fps for s in pipeline.sources]},
            "decode_ms_per_frame": decode_ms,
            "cpu": {"process_share": cpu_s / (window_s * (os.cpu_count() or 1)) if window_s > 0 else None,
                    "loadavg_before": [round(v, 2) for v in load_before], "cores": os.cpu_count()},
            "publisher": {"sent": pipeline.publisher.sent, "not_sent": pipeline.publisher.not_sent},
            "subscriber": {"received": len(subscriber.records), "malformed": subscriber.malformed,
                           "ends": sorted(subscriber.ended)},
            "engine_stage": {"batches": engine_stage.batches, "frames": engine_stage.batched_frames},
        },
        decode_ms=max((v for v in decode_ms.values() if v is not None), default=None))


def _await_subscription(pipeline: Pipeline, subscriber: Subscriber) -> None:
    """PUB drops what it sends before a subscription arrives: probe until one gets through."""
    if not subscriber.connected.wait(SUBSCRIBE_TIMEOUT_S):
        raise BenchError("the benchmark subscriber did not start")
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
    while not subscriber.probed.wait(0.05):
        if time.monotonic() > deadline:
            raise BenchError(f"no subscription reached {pipeline.endpoint} within {SUBSCRIBE_TIMEOUT_S:g} s")
        pipeline.publisher.handle_subscriptions()  # an XPUB applies subscriptions only as it reads them
        pipeline.publisher.socket.send(PROBE)


def _case_fields(spec: CaseSpec) -> dict:
    fields = asdict(spec)
    fields["model"] = str(spec.model) if spec.model else None
    fields["inputs"] = [str(p) for p in spec.inputs]
    fields["mode"] = spec.mode
    return fields


def summarize_run(spec: CaseSpec, records: list[FrameRecord], calls: list[InferCall], warm_ns: int, stop_ns: int,
                  snap0: dict, snap1: dict, final: dict, offered_fps: float | None, extra: dict,
                  decode_ms: float | None = None) -> dict:
    """The case's figures from what was recorded (pure: no clock, no pipeline)."""
    window = stats.in_window(records, warm_ns, stop_ns)
    window_ns = stop_ns - warm_ns
    window_calls = [c for c in calls if warm_ns <= c.start_ns < stop_ns]
    latency = stats.latencies_ms(window)
    parts = stats.breakdown(window, calls)
    read = {sid: snap1[sid]["in"] - snap0.get(sid, {}).get("in", 0) for sid in snap1}
    busy = stats.busy_fractions(records, calls, warm_ns, stop_ns, decode_ms, read)
    fps = stats.rate(len(window), window_ns / 1e9)

    def total(snap: dict, key: str) -> int:
        return sum(s[key] for s in snap.values())

    per_stream = {}
    for sid in sorted(final):
        mine = [r for r in window if r.stream == sid]
        lat = stats.summarize(stats.latencies_ms(mine))
        per_stream[sid] = {**final[sid], "fps": stats.rate(len(mine), window_ns / 1e9),
                           "latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"],
                           "window_dropped": snap1.get(sid, {}).get("dropped", 0) - snap0.get(sid, {}).get("dropped", 0)}
    batches = [c.batch for c in window_calls]
    return {
        **extra,
        "fps": {"sustained": fps, "per_stream": fps / max(1, spec.streams), "offered": offered_fps,
                "window_s": window_ns / 1e9},
        "latency_ms": stats.summarize(latency),
        "delivery_latency_ms": stats.summarize(stats.delivery_ms(window)),
        "stages": {"mean_ms": parts.mean_ms(), "share": parts.shares(), "labels": stats.SEGMENT_LABELS,
                   "network_timed": bool(window_calls)},
        "busy": busy,
        "bottleneck": stats.bottleneck(busy),
        "batch": {"mean": float(np.mean(batches)) if batches else None, "calls": len(batches)},
        "frames": {"in": total(final, "in"), "out": total(final, "out"), "dropped": total(final, "dropped"),
                   "skipped": total(final, "skipped"), "received": len(records),
                   "window": {"in": total(snap1, "in") - total(snap0, "in"), "out": len(window),
                              "dropped": total(snap1, "dropped") - total(snap0, "dropped")},
                   "sequence_gaps": sum(stats.sequence_gaps(records).values())},
        "per_stream": per_stream,
        "latency_samples_ms": [round(float(v), 2) for v in latency],
    }
