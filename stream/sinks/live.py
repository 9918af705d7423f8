"""A pipeline's servers for viewers and operators: web viewer, RTSP, Prometheus metrics.

All of them listen before the pipeline starts (a port in use is an error then, with one
line), take frames from the taps (stream/sinks/tap.py) and close with the pipeline.
"""
from __future__ import annotations

import logging
from typing import Any

from stream.sinks.base import SinkError

log = logging.getLogger("chromacast.live")


class LiveOutputs:
    def __init__(self) -> None:
        self.web = None
        self.rtsp = None
        self.metrics = None

    @classmethod
    def open(cls, config: Any, pipeline: Any) -> "LiveOutputs":
        """Whatever `config` (a PipelineConfig) turns on; SinkError, with all closed, if one fails."""
        outputs = cls()
        try:
            if getattr(config, "web", None) is not None:
                from stream.sinks.web import WebServer

                outputs.web = WebServer(config.web)
                log.info("web viewer at %s (MJPEG at %sstream/<id>.mjpg)", outputs.web.url, outputs.web.url)
            if getattr(config, "rtsp", None) is not None:
                from stream.sinks.rtsp import RtspOut

                outputs.rtsp = RtspOut(config.rtsp)
                log.info("RTSP at %s<stream id>", outputs.rtsp.url)
            if getattr(config, "metrics", None) is not None:
                from stream.sinks.metrics import PipelineMetrics

                outputs.metrics = PipelineMetrics(config.metrics, pipeline, outputs.counted)
                log.info("Prometheus metrics at %s", outputs.metrics.url)
        except SinkError:
            outputs.close()
            raise
        return outputs

    @property
    def taps(self) -> list:
        return [t for t in (self.web and self.web.hub, self.rtsp) if t]

    def counted(self) -> list:
        return self.taps

    def timed(self, engine: Any) -> Any:
        """The engine to run: timed for the metrics when they are on."""
        return self.metrics.timed(engine) if self.metrics else engine

    def close(self) -> None:
        for name in ("web", "rtsp", "metrics"):
            server = getattr(self, name)
            if server is not None:
                setattr(self, name, None)
                try:
                    server.close()
                except Exception as exc:  # closing must not hide the run's own result
                    log.warning("%s: %s", name, exc)
