"""Prometheus metrics of a running pipeline at http://HOST:PORT/metrics (docs/metrics.md).

Counters and gauges are read from the pipeline's own counters when Prometheus scrapes
(stream/stats.py, the publisher, the outputs), so the frame path pays nothing for them; only
the three histograms are observed per frame or per batch. Binds to 127.0.0.1 unless the config
says otherwise.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.frame import FrameHeader
from stream.sinks.base import SinkError
from stream.sinks.live_config import MetricsConfig

log = logging.getLogger("chromacast.metrics")

LATENCY_BUCKETS = (.005, .01, .02, .035, .05, .075, .1, .15, .2, .3, .5, 1, 2, 5)
INFERENCE_BUCKETS = (.001, .0025, .005, .01, .02, .035, .05, .075, .1, .2, .5, 1, 2)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256)


class CountedOutput(Protocol):
    """An output the metrics report on: the web viewer, the RTSP server."""

    name: str

    def counts(self) -> dict[str, tuple[int, int]]:
        """stream id → (frames taken, frames dropped because a viewer or encoder was behind)."""

    @property
    def viewers(self) -> int: ...


class _PipelineCollector(Collector):
    def __init__(self, pipeline: Any, outputs: Callable[[], Iterable[CountedOutput]]):
        self.pipeline, self.outputs = pipeline, outputs

    def collect(self):
        p = self.pipeline
        streams = list(p.stats.streams.items())
        frames_in = CounterMetricFamily("chromacast_frames_in", "Frames read from the source", labels=["stream"])
        frames_out = CounterMetricFamily("chromacast_frames_out", "Frames colorized (output=pipeline) and "
                                         "taken by each output", labels=["stream", "output"])
        dropped = CounterMetricFamily("chromacast_frames_dropped", "Frames left out: engine_behind (a live "
                                      "source's oldest waiting frame), unusable (undecodable), or an output's "
                                      "viewer or encoder behind", labels=["stream", "reason"])
        reconnects = CounterMetricFamily("chromacast_camera_reconnects", "Camera reconnections", labels=["stream"])
        for sid, s in streams:
            frames_in.add_metric([sid], s.frames_in)
            frames_out.add_metric([sid, "pipeline"], s.frames_out)
            if p.publisher is not None:
                frames_out.add_metric([sid, "publish"], s.frames_out)  # the publisher writes every frame
            dropped.add_metric([sid, "engine_behind"], s.dropped)
            dropped.add_metric([sid, "unusable"], s.skipped)
            reconnects.add_metric([sid], s.reconnects)
        viewers = GaugeMetricFamily("chromacast_viewers", "Clients watching each output", labels=["output"])
        for output in self.outputs():
            for sid, (taken, lost) in output.counts().items():
                frames_out.add_metric([sid, output.name], taken)
                dropped.add_metric([sid, f"{output.name}_behind"], lost)
            viewers.add_metric([output.name], output.viewers)
        yield from (frames_in, frames_out, dropped, reconnects, viewers)
        yield GaugeMetricFamily("chromacast_active_streams", "Streams running now",
                                value=sum(1 for _, s in streams if s.ended is None))
        slots = getattr(p, "slots", None)
        yield GaugeMetricFamily("chromacast_state_slots_in_use", "Streams holding recurrent state",
                                value=len(slots.slots) if slots is not None else 0)
        publisher = p.publisher
        if publisher is not None:
            yield _counter("chromacast_publish_messages_not_sent", "Messages the ZeroMQ publisher dropped "
                           "because every subscriber queue was full", publisher.not_sent)
            yield _counter("chromacast_publish_subscriptions_rejected", "Subscriptions to topics that are no "
                           "stream here, ignored", publisher.subscriptions_rejected)
            yield _counter("chromacast_publish_peers_dropped", "Subscribers disconnected for sending too many "
                           "subscriptions", publisher.peers_dropped)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class TimedEngine:
    """The engine, with each batch's inference time and size observed (everything else passes through)."""

    def __init__(self, engine: Any, seconds: Histogram, sizes: Histogram):
        self._engine, self._seconds, self._sizes = engine, seconds.labels(engine.name), sizes

    def predict(self, l8_frames: Sequence, states: Sequence, hints=None, **options):
        return self._timed(self._engine.predict, l8_frames, states, hints, **options)

    def colorize(self, l8_frames: Sequence, states: Sequence, hints=None):
        return self._timed(self._engine.colorize, l8_frames, states, hints)

    def _timed(self, run, l8_frames, states, hints, **options):
        start = time.perf_counter()
        out = run(l8_frames, states, hints, **options)
        self._seconds.observe(time.perf_counter() - start)
        self._sizes.observe(len(l8_frames))
        return out

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


class PipelineMetrics:
    """The /metrics server of one pipeline; binds in the constructor (SinkError when it cannot)."""

    def __init__(self, config: MetricsConfig, pipeline: Any,
                 outputs: Callable[[], Iterable[CountedOutput]] = lambda: ()):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_PipelineCollector(pipeline, outputs))
        self.latency = Histogram("chromacast_end_to_end_latency_seconds", "Capture to publish (or to colorized "
                                 "without a publisher), from the frame headers", ["stream"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.inference = Histogram("chromacast_inference_seconds", "Time the engine takes for one batch",
                                   ["engine"], registry=self.registry, buckets=INFERENCE_BUCKETS)
        self.batch_size = Histogram("chromacast_batch_size", "Frames per engine batch", registry=self.registry,
                                    buckets=BATCH_BUCKETS)
        self._latency_children: dict[str, Any] = {}
        try:
            self.server, self._thread = start_http_server(config.port, config.host, self.registry)
        except OSError as exc:
            raise SinkError(f"metrics: cannot listen on {config.host}:{config.port}: "
                            f"{exc.strerror or exc}") from None
        self.port = self.server.server_address[1]
        self.url = f"http://{config.host}:{self.port}/metrics"
        pipeline.stats.listeners.append(self.frame_out)

    def frame_out(self, header: FrameHeader, end_ns: int) -> None:
        child = self._latency_children.get(header.stream)
        if child is None:
            child = self._latency_children[header.stream] = self.latency.labels(header.stream)
        child.observe((end_ns - header.capture_ns) / 1e9)

    def timed(self, engine: Any) -> TimedEngine:
        return TimedEngine(engine, self.inference, self.batch_size)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
