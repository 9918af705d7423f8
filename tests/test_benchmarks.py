"""The benchmark's own correctness: its statistics on known inputs, its counts on short real
runs (real pipeline, real ZeroMQ on loopback, a real H.264 clip in tmp_path), and its plots
and summary. Nothing here checks speed."""
import json
import multiprocessing

import cv2
import numpy as np
import pytest

from benchmarks import analysis, report, stats
from benchmarks.case import CaseSpec, run_case
from benchmarks.cli import main as bench_main
from benchmarks.clips import make_clip
from benchmarks.stats import FrameRecord, InferCall

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MS = 1_000_000


# --- statistics on known values ------------------------------------------------------------
def test_percentiles_of_known_latencies():
    s = stats.summarize(np.arange(1, 101))  # 1..100 ms
    assert s["count"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    constant = stats.summarize([42.0] * 7)
    assert constant["p50"] == constant["p99"] == 42.0
    empty = stats.summarize([])
    assert empty["count"] == 0 and empty["p99"] is None and empty["mean"] is None


def record(stream, seq, capture_ms, prep, batch, engine, publish, received=None):
    stamps = {"prep": prep, "batch": batch, "engine": engine, "publish": publish}
    return FrameRecord(stream, seq, capture_ms * MS, {k: v * MS for k, v in stamps.items()},
                       (received or publish + 1) * MS)


def test_latency_and_segments_from_headers():
    # two frames of one batch (network 10-30 ms), published one after the other
    recs = [record("a", 0, 0, 2, 5, 40, 50), record("b", 0, 1, 3, 5, 41, 60)]
    calls = [InferCall(2, 10 * MS, 30 * MS)]
    assert stats.latencies_ms(recs).tolist() == [50.0, 59.0]
    assert stats.delivery_ms(recs).tolist() == [51.0, 60.0]
    parts = stats.breakdown(recs, calls)
    seg = {k: v.tolist() for k, v in parts.segments.items()}
    assert seg["l_plane"] == [2.0, 2.0]
    assert seg["wait_engine"] == [3.0, 2.0]
    assert seg["network"] == [20.0, 20.0]
    assert seg["colour_maths"] == [15.0, 16.0]
    # the output thread takes frame a at 40 and is busy until 50; b (ready at 41) waits 9 ms
    assert seg["wait_output"] == [0.0, 9.0]
    assert seg["publish"] == [10.0, 10.0]
    total = sum(np.array(v) for v in seg.values())
    assert total.tolist() == parts.total.tolist() == [50.0, 59.0]
    assert sum(parts.shares().values()) == pytest.approx(1.0)


def test_serial_queue_and_union():
    arrivals = np.array([0, 5, 30], np.int64)
    departures = np.array([10, 20, 35], np.int64)
    wait, service = stats.serial_queue(arrivals, departures)
    assert wait.tolist() == [0, 5, 0] and service.tolist() == [10, 10, 5]
    assert stats.union_ns([(0, 10), (5, 15), (20, 25)]) == 20
    assert stats.union_ns([]) == 0


def test_busy_fractions_cut_at_the_window():
    recs = [record("a", i, 10 * i, 10 * i + 1, 10 * i + 1, 10 * i + 6, 10 * i + 8) for i in range(10)]
    calls = [InferCall(1, (10 * i + 2) * MS, (10 * i + 5) * MS) for i in range(10)]
    busy = stats.busy_fractions(recs, calls, 0, 100 * MS)
    assert busy["engine"] == pytest.approx(0.5)  # 5 of every 10 ms
    assert busy["network"] == pytest.approx(0.3)
    assert busy["output"] == pytest.approx(0.2)
    assert busy["ingest"] == pytest.approx(0.1)
    assert stats.bottleneck(busy) == "engine"
    half = stats.busy_fractions(recs, calls, 0, 50 * MS)
    assert half["engine"] == pytest.approx(0.5)
    # 20 frames read (10 of them dropped later) at 2 ms decoding + 1 ms L plane each
    read = stats.busy_fractions(recs, calls, 0, 100 * MS, decode_ms=2.0, frames_read={"a": 20})
    assert read["ingest"] == pytest.approx(0.6)


def test_counts_gaps_and_windows():
    recs = [record("a", s, s * 33, s * 33 + 1, s * 33 + 1, s * 33 + 20, s * 33 + 25) for s in (0, 1, 2, 5, 6)]
    recs += [record("b", s, s * 33, s * 33 + 1, s * 33 + 1, s * 33 + 20, s * 33 + 25) for s in range(4)]
    assert stats.sequence_gaps(recs) == {"a": 2, "b": 0}
    window = stats.in_window(recs, 33 * MS, 166 * MS)
    assert sorted((r.stream, r.seq) for r in window) == [("a", 1), ("a", 2), ("a", 5), ("b", 1), ("b", 2), ("b", 3)]
    assert stats.rate(60, 2.0) == 30.0 and stats.rate(5, 0) == 0.0


def test_infer_calls_matched_to_frames():
    batch = np.array([0, 100, 200]) * MS
    engine = np.array([50, 150, 220]) * MS
    calls = [InferCall(1, 110 * MS, 140 * MS), InferCall(1, 10 * MS, 40 * MS)]
    assert stats.match_calls(batch, engine, calls).tolist() == [1, 0, -1]


def test_knees_and_goal():
    assert stats.keeps_up(29.5, 30, 0, 180)
    assert not stats.keeps_up(25.0, 30, 0, 180)
    assert not stats.keeps_up(30.0, 30, 10, 180)
    assert stats.realtime_knee([(1, True), (2, True), (4, False), (8, False)]) == 4
    assert stats.realtime_knee([(1, True), (2, True)]) is None
    assert stats.throughput_knee([(1, 20.0), (2, 38.0), (4, 40.0), (8, 41.0)]) == 2
    assert stats.throughput_knee([(1, 20.0), (2, 38.0), (4, 70.0)]) is None
    ok = stats.goal_check(30.0, 30.0, 80.0, 0, 12.0)
    assert ok["met"] and all(ok.values())
    slow = stats.goal_check(30.0, 30.0, 120.0, 0, 12.0)
    assert not slow["met"] and not slow["p99_under_100ms"]
    unmeasured = stats.goal_check(30.0, 30.0, 80.0, 0, None)
    assert unmeasured["seed_ratio_10x"] is None and not unmeasured["met"]


# --- short real runs ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(320, 180, 30.0, seconds=2.0, folder=tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def file_run(clip, engine):
    """Two streams as fast as possible (file behaviour) for 2 seconds (`engine`: tests/conftest.py)."""
    spec = CaseSpec(streams=2, fps=None, realtime=False, seconds=2.0, warmup_s=0.5, inputs=[clip], short_side=96)
    return run_case(spec, engine)


def test_file_run_counts_every_frame(file_run):
    frames = file_run["frames"]
    assert frames["in"] > 0
    assert frames["in"] == frames["out"] == frames["received"]  # file jobs never drop
    assert frames["dropped"] == 0 and frames["sequence_gaps"] == 0
    assert file_run["publisher"]["not_sent"] == 0
    assert file_run["subscriber"]["ends"] == ["s0", "s1"]
    assert sum(s["in"] for s in file_run["per_stream"].values()) == frames["in"]
    window = frames["window"]["out"]
    assert 0 < window <= frames["out"]
    assert file_run["latency_ms"]["count"] == window == len(file_run["latency_samples_ms"])
    lat = file_run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert file_run["fps"]["sustained"] == pytest.approx(window / file_run["fps"]["window_s"])
    assert sum(file_run["stages"]["share"].values()) == pytest.approx(1.0)
    assert file_run["stages"]["network_timed"] and file_run["stages"]["mean_ms"]["network"] > 0
    assert file_run["case"]["width"] == 320 and file_run["case"]["height"] == 180


def test_realtime_run_accounts_for_drops(clip, engine):
    spec = CaseSpec(streams=1, fps=30.0, realtime=True, seconds=2.0, warmup_s=0.5, inputs=[clip], short_side=96)
    result = run_case(spec, engine)
    frames = result["frames"]
    assert frames["in"] > 0
    assert frames["in"] == frames["out"] + frames["dropped"]  # every frame read is published or dropped
    assert frames["received"] == frames["out"]
    assert frames["sequence_gaps"] <= frames["dropped"]
    assert result["fps"]["offered"] == 30.0
    assert result["fps"]["sustained"] <= 30.0 * 1.2  # never faster than the source
    assert set(result["goal"]) >= {"sustained", "p99_under_100ms", "no_drops", "met"}


# --- plots and summary ---------------------------------------------------------------------
def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 50 and image.shape[1] > 50


def test_case_plot_is_a_png(file_run, tmp_path):
    path = report.plot_case(file_run, tmp_path / "case.png")
    assert_png(path)


def test_matrix_plots_and_summary_come_from_the_json(file_run, tmp_path):
    def variant(size, streams, realtime, fps, p99):
        r = json.loads(json.dumps(file_run))
        r["case"].update(size=size, streams=streams, realtime=realtime)
        r["fps"].update(sustained=fps, offered=30.0 * streams if realtime else None)
        r["latency_ms"]["p99"] = p99
        r["frames"]["window"].update(dropped=0 if fps >= 29.5 * streams else 50, **{"in": 180 * streams})
        return r

    matrix = {"machine": report.machine_info(), "settings": {"seconds": 2.0, "warmup_s": 0.5},
              "cases": [variant("720p", 1, True, 29.9, 71.5), variant("720p", 2, True, 41.0, 300.0),
                        variant("720p", 1, False, 55.0, 400.0), variant("720p", 2, False, 60.0, 700.0)],
              "batch_scaling": [], "seed": {"fps": 2.5, "frames": 6, "route": "seed", "input": "224x224"},
              "stabiliser_off": variant("720p", 1, False, 62.5, 380.0)}
    plots = report.write_plots(matrix, tmp_path)
    for name in plots.values():
        assert_png(tmp_path / name)
    summary = report.write_summary(matrix, tmp_path, plots).read_text()
    assert "29.9" in summary and "71.5" in summary  # the headline figures, as in the JSON
    assert "22.0x" in summary  # 55.0 fps as fast as possible / 2.5 fps seed
    found = analysis.analyse(matrix)
    assert found["knees"]["720p"]["realtime_knee"] == 2
    assert found["goal"]["checks"]["met"]
    assert "falls behind at 2" in summary
    assert found["stabiliser"]["ratio"] == pytest.approx(55.0 / 62.5)
    assert "55.0 fps with it, 62.5 fps without (0.88x)" in summary

    # redrawn from the saved JSON, with a later quality.json beside it
    (tmp_path / "matrix.json").write_text(json.dumps(matrix))
    ewarp = {"ewarp": 0.000777, "cdc": 0.002, "psnr": 20.0}
    (tmp_path / "quality.json").write_text(json.dumps({"model": "m.onnx", "short_side": 256, "video_mean": {
        v: ewarp for v in ("state_on", "state_off", "grey", "ground_truth", "carried", "stabilised")}}))
    assert report.main([str(tmp_path / "matrix.json")]) == 0
    assert "| carried | 0.777 |" in (tmp_path / "SUMMARY.md").read_text()
    assert "| stabilised | 0.777 |" in (tmp_path / "SUMMARY.md").read_text()


def test_bench_command_rejects_a_missing_file(tmp_path, capsys):
    assert bench_main(["--input", str(tmp_path / "none.mp4"), "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


def test_bench_command_rejects_a_broken_video(tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert bench_main(["--input", str(broken), "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0]


def test_floor_and_load_parts_in_the_json(clip, engine, tmp_path):
    spec = CaseSpec(streams=1, fps=None, realtime=False, seconds=1.0, warmup_s=0.3, inputs=[clip], short_side=96,
                    floor=True, load=1)
    result = run_case(spec, engine)
    floor = result["floor"]
    for part in ("decode_ms", "lab_ms", "jpeg_ms"):
        assert floor[part] is not None and floor[part] >= 0
    assert floor["total_ms"] == pytest.approx(floor["decode_ms"] + floor["lab_ms"] + floor["jpeg_ms"])
    assert (floor["width"], floor["height"]) == (320, 180) and floor["frames"] > 0
    assert floor["pipeline_cpu_ms_per_frame"] == result["cpu"]["ms_per_frame"] > 0
    assert floor["multiple"] == pytest.approx(floor["pipeline_cpu_ms_per_frame"] / floor["total_ms"])
    assert result["cpu"]["load_processes"] == 1
    assert not [p for p in multiprocessing.active_children() if p.name == "bench-load"]  # the load ended
    out = tmp_path / "bench.json"
    assert bench_main(["--input", str(clip), "--max", "--seconds", "0.5", "--warmup", "0.2", "--short-side", "96",
                       "--floor", "-q", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["floor"]) >= {"decode_ms", "lab_ms", "jpeg_ms", "total_ms", "multiple"}
