"""A running pipeline: sources → ingest threads → batcher + engine → output → sinks.

    pipeline = Pipeline(config)
    pipeline.open()     # engine, inputs, publisher: fails here, with one line, on bad input
    pipeline.start()
    pipeline.wait()     # until every stream ended (or request_stop() drained it)
    pipeline.close()
    print(pipeline.stats.report())

`request_stop()` is the graceful stop (SIGINT/SIGTERM): sources stop reading, the frames
already inside go through to every sink, files are closed properly.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from engines.backend import Engine, EngineError, open_engine
from engines.hints import Hint
from engines.colour import MAX_SATURATION
from engines.stabilise import StabiliserSettings, Stabilisers, usable_settings
from stream.batcher import Batcher
from stream.config import PipelineConfig, TritonConfig
from stream.ingest import SourceWorker
from stream.queues import BoundedQueue, Overflow
from stream.reference import ReferenceError, StreamReferences
from stream.sinks.base import SinkError, SinkWorker
from stream.sources import Disconnected, SourceError, open_capture
from stream.stages import EngineStage, OutputStage
from stream.state import StateSlots
from stream.stats import Stats

log = logging.getLogger("chromacast.pipeline")

ENGINE_OUT_QUEUE = 4
WINDOW_QUEUE = 2
SOURCE_STOP_GRACE_S = 2.0  # then a source stuck in a read is ended for it


class PipelineError(RuntimeError):
    """The pipeline cannot start or failed; str() is one line for the user."""


class Pipeline:
    def __init__(self, config: PipelineConfig, engine: Engine | None = None,
                 socket_setup: Callable | None = None):
        """`engine`: an open engine to share (else one is opened from the config);
        `socket_setup`: called on the PUB socket before it binds (socket security)."""
        self.config = config
        self.stats = Stats(config.stats.latency_samples)
        self.engine = engine
        self._own_engine = engine is None
        self._socket_setup = socket_setup  # hook for socket security (CurveZMQ) on the publisher
        self.sources: list[SourceWorker] = []
        self.publisher = None
        self.recorder = None
        self.window = None
        self.sink_workers: list[SinkWorker] = []
        self.live = None  # web viewer, RTSP, metrics (stream/sinks/live.py)
        self.error: str | None = None
        self.references: StreamReferences | None = None  # per-source colour references (stream.reference)
        self._stop_requested = threading.Event()
        self._stop_time: float | None = None
        self._started_at: float | None = None
        self._opened = False
        self._captures: list = []

    # --- life cycle -------------------------------------------------------------------
    def open(self) -> "Pipeline":
        """Open every input, the engine and every sink; PipelineError says what failed.
        Inputs first: a missing file or camera is reported before the model loads."""
        cfg = self.config
        try:
            if cfg.window is not None:
                from stream.sinks.window import display_unavailable_reason

                reason = display_unavailable_reason()
                if reason:
                    raise SinkError(f"window: {reason}")
            self._captures = self._open_captures()
            wanted = {s.id: s.reference for s in cfg.sources if s.reference}
            self.references = StreamReferences(wanted, cfg.engine.threads) if wanted else None
            if self.engine is None:
                self.engine = open_engine(cfg.engine.model, cfg.engine.kind, threads=cfg.engine.threads,
                               short_side=cfg.engine.short_side, max_batch=cfg.engine.max_batch,
                               triton=cfg.engine.triton or TritonConfig(), precision=cfg.engine.precision)
            self.slots = StateSlots(self.engine, cfg.engine.short_side, cfg.state, cfg.hints)
            max_wait = None if cfg.engine.max_wait_ms is None else cfg.engine.max_wait_ms / 1000
            self.batcher = Batcher(self.slots.network_size, cfg.engine.max_batch, max_wait)
            for source_cfg, capture in zip(cfg.sources, self._captures):
                self._add_source(source_cfg, capture)
            self._open_sinks()
        except (EngineError, SourceError, SinkError, ReferenceError) as exc:
            self.close()
            raise PipelineError(str(exc)) from None
        self._opened = True
        return self

    def _open_captures(self) -> list:
        """Every input, opened. A live camera that is not up yet waits under its reconnect
        policy while the other inputs run; if no input opens at all, the first error stands."""
        captures, waiting = [], []
        try:
            for source_cfg in self.config.sources:
                try:
                    captures.append(open_capture(source_cfg))
                except SourceError as exc:
                    if not source_cfg.camera:
                        raise
                    waiting.append((source_cfg, exc))
                    captures.append(Disconnected(source_cfg.fps))
            if waiting and len(waiting) == len(captures):
                raise waiting[0][1]
        except SourceError:
            for capture in captures:
                capture.close()
            raise
        for source_cfg, exc in waiting:
            give_up = source_cfg.reconnect.give_up_after_s
            log.warning("%s: %s; retrying %s", source_cfg.id, exc,
                        "until it comes up" if give_up is None else f"for up to {give_up:g} s")
        return captures

    def _add_source(self, source_cfg, capture) -> None:
        stream_stats = self.stats.stream(source_cfg.id)

        def count_drop(_frame, s=stream_stats) -> None:
            s.dropped += 1

        queue = self.batcher.add_stream(source_cfg.id, source_cfg.queue_size,
                                        Overflow.DROP_OLDEST if source_cfg.live else Overflow.BLOCK,
                                        capture.fps, on_drop=count_drop)
        self.sources.append(SourceWorker(source_cfg, capture, queue, self.stats, self.config.state))
        rate = "not connected yet" if isinstance(capture, Disconnected) else f"at {capture.fps:.3g} fps"
        log.info("%s: %s %s %s (%s)", source_cfg.id, source_cfg.kind, getattr(source_cfg, source_cfg.kind),
                 rate, "live: drops the oldest frame when behind" if source_cfg.live else "every frame")

    def _open_sinks(self) -> None:
        cfg = self.config
        from stream.sinks.live import LiveOutputs
        from stream.sinks.tap import EncodingSink, TeePublisher

        self.live = LiveOutputs.open(cfg, self)
        if cfg.publish is not None:
            self.publisher = TeePublisher(cfg.publish, self._socket_setup,
                                          streams=[source.id for source in cfg.sources])
            self.publisher.taps = self.live.taps  # web and RTSP serve the published JPEGs as they are
            log.info("publishing on %s (topic = stream id)", self.publisher.endpoint)
        elif self.live.taps:
            self.sink_workers.append(SinkWorker(EncodingSink(self.live.taps), 4, self.fail))
        if cfg.record is not None:
            from stream.sinks.recorder import Recorder

            self.recorder = Recorder(cfg.record)
            self.sink_workers.append(SinkWorker(self.recorder, cfg.record.queue, self.fail))
        if cfg.window is not None:
            from stream.sinks.window import WindowSink

            self.window = WindowSink(cfg.window, self, capacity=WINDOW_QUEUE)

    def start(self) -> None:
        if not self._opened:
            self.open()
        self._started_at = time.monotonic()
        self._engine_out: BoundedQueue = BoundedQueue(ENGINE_OUT_QUEUE, Overflow.BLOCK, name="engine-out")
        self.engine_stage = EngineStage(self.live.timed(self.engine), self.batcher, self.slots, self._engine_out,
                                        self.fail, self.references)
        queues = [w.queue for w in self.sink_workers] + ([self.window.queue] if self.window else [])
        self.output_stage = OutputStage(self._engine_out, self.stats, self.publisher, queues, self.fail,
                                        merge=self.engine.merge, stabilisers=self._stabilisers(),
                                        saturation=self.config.saturation,
                                        idle_timeout_s=self.config.state.idle_timeout_s)
        if self.config.saturation != 1.0:
            if self.engine.merges_on_device:
                log.warning("saturation %g is not applied: the %s engine merges on the device",
                            self.config.saturation, self.engine.name)
            else:
                log.info("saturation %g (1: as predicted)", self.config.saturation)
        for thread in self.sink_workers + [self.output_stage, self.engine_stage]:
            thread.start()
        for source in self.sources:
            source.start()
        self.batcher.no_more_streams()

    def _stabilisers(self) -> Stabilisers | None:
        cfg = self.config.state.stabiliser
        settings = usable_settings(StabiliserSettings(cfg.strength, cfg.tolerance, cfg.flow), self.engine)
        if settings is None:
            return None
        log.info("colour stabiliser: strength %g, tolerance %g, %s flow (state.stabiliser; strength 0 turns it off)",
                 cfg.strength, cfg.tolerance, cfg.flow)
        return Stabilisers(settings, self.engine.info.ab_stride)

    def adjust_saturation(self, step: float) -> float:
        """Change the shown colours' strength by `step` (the live window's +/- keys)."""
        stage = self.output_stage
        stage.saturation = round(min(max(stage.saturation + step, 0.0), MAX_SATURATION), 2)
        log.info("saturation %g", stage.saturation)
        return stage.saturation

    def request_stop(self) -> None:
        """Graceful stop: no new frames; everything already read reaches every sink."""
        if not self._stop_requested.is_set():
            self._stop_time = time.monotonic()
            self._stop_requested.set()
            for source in self.sources:
                source.stop()

    def fail(self, message: str) -> None:
        """A stage failed: remember the first error and stop gracefully."""
        if self.error is None:
            self.error = message
            log.error("%s", message)
        self.request_stop()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every stage finished (True) or `timeout` passed (False). Runs the live window
        (GUI calls belong to the main thread) and the duration limit while it waits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        duration = self.config.duration_s
        interval = self.config.stats.interval_s
        next_report = time.monotonic() + interval if interval else None
        threads = self.sink_workers + [self.output_stage]
        while any(t.is_alive() for t in threads):
            if next_report and time.monotonic() >= next_report:
                log.info("%s", self.stats.summary().line())
                next_report += interval
            if self.window:
                self.window.pump()
            if duration and self._started_at and time.monotonic() - self._started_at >= duration:
                if not self.stopping:
                    log.info("duration of %g s reached; stopping", duration)
                self.request_stop()
            if self._stop_time and time.monotonic() - self._stop_time > SOURCE_STOP_GRACE_S:
                for source in self.sources:
                    source.abandon()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.output_stage.join(0.02 if self.window else 0.1)
            if not self.output_stage.is_alive():
                for worker in self.sink_workers:
                    worker.join(0.1)
        if self.window:
            self.window.close()
        return True

    def close(self) -> None:
        """Release everything (after wait(), or after a failed open)."""
        if self._started_at is None:  # never ran: no stage will close these on its own
            for capture in self._captures:
                capture.close()
            if self.publisher is not None:
                self.publisher.close()
            if self.window is not None:
                self.window.close()
        if self.live is not None:
            self.live.close()
        if self._own_engine and self.engine is not None:
            self.engine.close()
        if self.references is not None and self.references.auto and self._started_at is not None:
            log.info("reference auto: %s", self.references.summary())

    # --- hints (from the window, or from any caller) ----------------------------------
    def add_hint(self, stream_id: str, hint: Hint) -> None:
        """Feed `hint` with the stream's next frame(s); its recurrent state carries it on."""
        self.slots.add_hint(stream_id, hint)

    def clear_hints(self, stream_id: str) -> None:
        self.slots.clear_hints(stream_id)

    @property
    def endpoint(self) -> str | None:
        return self.publisher.endpoint if self.publisher else None


def run_pipeline(config: PipelineConfig, engine: Engine | None = None) -> Pipeline:
    """Open, run to the end and close; returns the pipeline (stats, error)."""
    pipeline = Pipeline(config, engine).open()
    try:
        pipeline.start()
        pipeline.wait()
    finally:
        pipeline.close()
    return pipeline
