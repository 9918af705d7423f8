"""Prometheus /metrics on a real port: parsed with prometheus-client's own parser, counters equal
to the run summary; a port in use and bad metrics settings are one error line."""
from __future__ import annotations

import re
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, make_config, run_cli, write_video
from stream.config import ConfigError, parse_config
from stream.pipeline import Pipeline


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of every sample at `url`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_match_the_run_summary(tmp_path, engine):
    video = write_video(tmp_path / "a.mp4", frames=20)
    config = make_config([{"file": str(video), "id": "a"}, {"file": str(video), "id": "b", "max_frames": 12}],
                         metrics={"port": 0}, publish={"bind": f"tcp://127.0.0.1:{free_port()}"})
    pipeline = Pipeline(config, engine).open()
    try:
        pipeline.start()
        pipeline.wait(60)
        samples = scrape(pipeline.live.metrics.url)
        summary = pipeline.stats.summary()
    finally:
        pipeline.close()
    assert summary.frames_out == 32
    for sid, stream in summary.streams.items():
        assert samples[("chromacast_frames_in_total", (("stream", sid),))] == stream.frames_in
        assert samples[("chromacast_frames_out_total", (("output", "pipeline"), ("stream", sid)))] == stream.frames_out
        assert samples[("chromacast_frames_out_total", (("output", "publish"), ("stream", sid)))] == stream.frames_out
        assert samples[("chromacast_frames_dropped_total", (("reason", "engine_behind"), ("stream", sid)))] \
            == stream.dropped
        assert samples[("chromacast_end_to_end_latency_seconds_count", (("stream", sid),))] == stream.frames_out
    batches = samples[("chromacast_batch_size_count", ())]
    assert samples[("chromacast_batch_size_sum", ())] == 32 and 0 < batches <= 32
    assert samples[("chromacast_inference_seconds_count", (("engine", "onnxruntime"),))] == batches
    assert samples[("chromacast_active_streams", ())] == 0  # both ended
    for name in ("messages_not_sent", "subscriptions_rejected", "peers_dropped"):
        assert samples[(f"chromacast_publish_{name}_total", ())] == 0


def test_metrics_port_in_use_is_one_error_line(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["run", "--source", str(video), "--no-publish", "--metrics-port", str(port),
                        "--short-side", "64", "-q"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"metrics: cannot listen on 127.0.0.1:{port}" in lines[0], done.stderr
    assert "frames in" not in done.stdout  # nothing ran


@pytest.mark.parametrize("body, pattern", [
    ("metrics: {port: 70000}", r"metrics\.port: Input should be less than or equal to 65535"),
    ("metrics: {host: 'my host'}", r"metrics\.host: must be an IP address"),
    ("metrics: {bind: x}", r"metrics\.bind: unknown key"),
])
def test_bad_metrics_settings_name_the_key(body, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(f"sources: [{{webcam: 0}}]\n{body}\n", "x.yaml")


def test_metrics_section_switches(tmp_path):
    assert parse_config("sources: [{webcam: 0}]\nmetrics: true\n").metrics.port == 9108
    assert parse_config("sources: [{webcam: 0}]\nmetrics: false\n").metrics is None
    assert re.match(r"127\.0\.0\.1", parse_config("sources: [{webcam: 0}]\nmetrics: {}\n").metrics.host)
