"""engine: triton against a real tritonserver on 127.0.0.1 (from the nvidia-pytriton wheel,
tests/triton_server/server.py), and the model repository that `chromacast triton-repo` writes."""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import onnxruntime as ort
import pytest

from conftest import ROOT, TEST_SHORT_SIDE, free_port, make_config, run_cli, write_video
from engines.backend import DEFAULT_MODEL, EngineError, open_engine
from engines.colour import l8_to_network
from engines.triton_repo import write_repository
from stream.pipeline import Pipeline, PipelineError
from test_pipeline import collect, start_with_subscriber
from triton_server.server import TritonServer, unavailable_reason

SIZE = (96, 64)  # network input (w, h) for the engine-level comparisons
AB_TOLERANCE = 1e-3  # Lab units; float32 noise between two runs of the same ONNX model


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-repo")
    write_repository(out, max_batch=8, idle_s=30)
    return out


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = TritonServer(repository, ["chromacast"], tmp_path_factory.mktemp("triton-log") / "server.log")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"tritonserver cannot start here: {str(exc)[:300]}")
    yield server
    server.stop()


def frames(n: int, seed: int) -> list[np.ndarray]:
    """Network-size L inputs: a moving gradient, different per stream."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (SIZE[1] * 2, SIZE[0] * 2), dtype=np.uint8)
    out = []
    for i in range(n):
        l8 = np.roll(base, (i * 2, i * 3), axis=(0, 1))[:SIZE[1], :SIZE[0]]
        out.append(l8_to_network(np.ascontiguousarray(l8), SIZE)[None, None])
    return out


def run_streams(engine, inputs: dict[str, list[np.ndarray]], reset_at: dict[str, int]) -> dict[str, list]:
    """ab per frame for each stream, all streams in one batch per step; a reset where asked."""
    states = {}
    for sid in inputs:
        states[sid] = engine.new_state(SIZE)
        states[sid].stream = sid
    out: dict[str, list] = {sid: [] for sid in inputs}
    for i in range(len(next(iter(inputs.values())))):
        for sid, at in reset_at.items():
            if i == at:
                engine.reset_state(states[sid])
        ab = engine.infer(np.concatenate([inputs[s][i] for s in inputs]), [states[s] for s in inputs])
        for row, sid in enumerate(inputs):
            out[sid].append(ab[row].copy())
    for state in states.values():
        engine.end_state(state)
    return out


# --- the generated repository (no server needed) -----------------------------------------------

def test_onnxruntime_model_config_is_valid_and_matches_the_onnx_model(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    assert run_cli(["triton-repo", str(tmp_path / "repo"), "--size", "224x160"]).returncode == 0
    folder = tmp_path / "repo" / "chromacast_onnxruntime"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_in = {i.name: i for i in session.get_inputs()}
    onnx_out = {o.name: o for o in session.get_outputs()}
    (state,) = config.sequence_batching.state
    assert config.backend == "onnxruntime" and config.max_batch_size == 8
    assert {i.name for i in config.input} | {state.input_name} == set(onnx_in)
    assert {o.name for o in config.output} | {state.output_name} == set(onnx_out)
    assert (state.input_name, state.output_name) == ("state", "next_state")
    channels = int(session.get_modelmeta().custom_metadata_map["state_channels"])
    (initial,) = state.initial_state
    assert list(state.dims) == [channels, 160 // 16, 224 // 16] == list(initial.dims)
    assert initial.zero_data
    assert [list(i.dims) for i in config.input] == [[1, 160, 224], [2, 160, 224], [1, 160, 224]]
    assert list(config.output[0].dims) == [2, 40, 56]
    assert config.sequence_batching.HasField("oldest")
    assert config.sequence_batching.max_sequence_idle_microseconds == 30_000_000
    python = text_format.Parse((tmp_path / "repo" / "chromacast" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert python.backend == "python" and (tmp_path / "repo" / "chromacast" / "1" / "model.py").is_file()
    assert [c.name for c in python.sequence_batching.control_input] == ["START", "END"]
    assert python.parameters["chromacast.contract"].string_value == "1"
    assert json.loads(python.parameters["chromacast.sys_path"].string_value) == [str(ROOT)]


def test_triton_repo_bad_model_is_one_line(tmp_path):
    done = run_cli(["triton-repo", str(tmp_path / "repo"), "--model", str(tmp_path / "missing.onnx")])
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "model file not found" in done.stderr


def test_unreachable_triton_is_one_line_error_before_any_frame(tmp_path):
    clip = write_video(tmp_path / "c.mp4", frames=4, width=96, height=64)
    config = make_config([{"id": "c", "file": str(clip)}],
                         engine={"kind": "triton", "triton": {"url": f"127.0.0.1:{free_port()}", "timeout_s": 2}})
    started = time.monotonic()
    with pytest.raises(PipelineError) as err:
        Pipeline(config).open()
    assert "unreachable" in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - started < 10


# --- a real server --------------------------------------------------------------------------------

def test_unknown_model_is_one_line_error(triton):
    with pytest.raises(EngineError) as err:
        open_engine(kind="triton", triton={"url": triton.url, "model": "nope"})
    assert "model 'nope' is not ready" in str(err.value) and "\n" not in str(err.value)


def test_triton_matches_local_engine_with_state_and_reset(triton, engine):
    """Two streams at once, 30 frames each, state carried; stream b resets at frame 12."""
    import tritonclient.grpc as grpcclient

    inputs = {"a": frames(30, 1), "b": frames(30, 2)}
    remote = open_engine(kind="triton", triton={"url": triton.url, "model": "chromacast"})
    try:
        got = run_streams(remote, inputs, {"b": 12})
    finally:
        remote.close()
    want = run_streams(engine, inputs, {"b": 12})
    for sid in inputs:
        for i, (g, w) in enumerate(zip(got[sid], want[sid])):
            assert np.abs(g - w).max() < AB_TOLERANCE, f"stream {sid} frame {i}"
    # the state matters (else this would prove nothing) and the reset really started afresh
    per_frame = run_streams(engine, {"a": inputs["a"][10:11]}, {})["a"][0]
    assert np.abs(want["a"][10] - per_frame).max() > 100 * AB_TOLERANCE
    fresh = run_streams(engine, {"b": inputs["b"][12:13]}, {})["b"][0]
    assert np.abs(got["b"][12] - fresh).max() < AB_TOLERANCE
    client = grpcclient.InferenceServerClient(triton.url)
    stats = client.get_inference_statistics("chromacast", as_json=True)["model_stats"][0]
    client.close()
    assert int(stats["execution_count"]) < int(stats["inference_count"])  # Triton batched the streams


def test_pipeline_on_triton_matches_local_pipeline(tmp_path, triton, engine):
    """A real pipeline (file sources, one looping: resets at 10 and 20) with engine triton
    publishes the same frames as with the local engine."""
    clip = write_video(tmp_path / "a.mp4", frames=10, width=160, height=120)
    other = write_video(tmp_path / "b.mp4", frames=24, width=128, height=96)
    sources = [{"id": "loop", "file": str(clip), "loop": True, "max_frames": 25},
               {"id": "plain", "file": str(other)}]
    results = {}
    for kind in ("triton", "onnxruntime"):
        config = make_config(sources, publish={"bind": f"tcp://127.0.0.1:{free_port()}", "jpeg_quality": 95},
                             engine={"kind": kind, "short_side": TEST_SHORT_SIDE, "threads": 2,
                                     "triton": {"url": triton.url}})
        pipeline, subscriber = start_with_subscriber(config, None if kind == "triton" else engine)
        try:
            results[kind] = collect(subscriber, {"loop", "plain"})
            assert pipeline.wait(60)
        finally:
            pipeline.close()
            subscriber.close()
        assert pipeline.error is None
    for sid, count in (("loop", 25), ("plain", 24)):
        remote, local = results["triton"][sid], results["onnxruntime"][sid]
        assert len(remote) == len(local) == count
        assert [h.seq for h, _ in remote if h.reset] == [h.seq for h, _ in local if h.reset]
        for (_, a), (_, b) in zip(remote, local):
            diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
            assert diff.mean() < 0.5 and diff.max() <= 24


def test_end_frees_the_sequence_and_logs_nothing_wrong(triton, caplog):
    remote = open_engine(kind="triton", triton={"url": triton.url, "timeout_s": 60})  # slow CI: no failover
    try:
        with caplog.at_level(logging.WARNING, "chromacast.engine"):
            run_streams(remote, {"x": frames(2, 3)}, {})
            # the same stream id again: a new sequence, with START, after the END
            run_streams(remote, {"x": frames(2, 3)}, {})
        assert remote.failovers == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        remote.close()


def test_two_servers_spread_streams_and_fail_over(triton, repository, engine, tmp_path, caplog):
    """Streams spread over two servers; killing one mid-run moves its streams to the other with
    fresh state while the others carry on; restarted, it takes new streams again."""
    second = TritonServer(repository, ["chromacast"], tmp_path / "second.log").start()
    remote = open_engine(kind="triton", triton={"url": [triton.url, second.url], "timeout_s": 5, "retry_s": 0.3})
    try:
        by_server: dict[str, list[str]] = {triton.url: [], second.url: []}
        n = 0
        while min(len(v) for v in by_server.values()) < 2:  # rendezvous hashing decides; take 2 of each
            sid = f"cam{n}"
            if len(by_server[remote._pick(sid).url]) < 2:
                by_server[remote._pick(sid).url].append(sid)
            n += 1
        ids = by_server[triton.url] + by_server[second.url]
        inputs = {sid: frames(10, seed) for seed, sid in enumerate(ids)}
        states = {}
        for sid in ids:
            states[sid] = remote.new_state(SIZE)
            states[sid].stream = sid
        got: dict[str, list] = {sid: [] for sid in ids}
        with caplog.at_level(logging.WARNING, "chromacast.engine"):
            for i in range(10):
                if i == 5:
                    second.kill()
                started = time.monotonic()
                ab = remote.infer(np.concatenate([inputs[s][i] for s in ids]), [states[s] for s in ids])
                assert time.monotonic() - started < 8  # nothing hangs
                for row, sid in enumerate(ids):
                    got[sid].append(ab[row])
                if i == 0:
                    assert {sid: states[sid].server.url for sid in ids} == {
                        sid: url for url, sids in by_server.items() for sid in sids}
        assert remote.failovers == 1 and "moved" not in caplog.text and "move to 1 other" in caplog.text
        assert all(states[sid].server.url == triton.url for sid in ids)
        moved = set(by_server[second.url])
        want = run_streams(engine, inputs, {sid: 5 for sid in moved})  # moved streams restart at frame 5
        for sid in ids:
            for i in range(10):
                assert np.abs(got[sid][i] - want[sid][i]).max() < AB_TOLERANCE, f"{sid} frame {i}"
        second.start()
        deadline = time.monotonic() + 20
        while not remote.servers[1].alive and time.monotonic() < deadline:
            time.sleep(0.1)
        assert remote.servers[1].alive
        newcomer = remote.new_state(SIZE)
        newcomer.stream = by_server[second.url][0] + "-again"
        while remote._pick(newcomer.stream).url != second.url:
            newcomer.stream += "+"
        remote.infer(inputs[ids[0]][0], [newcomer])
        assert newcomer.server.url == second.url
    finally:
        remote.close()
        second.stop()
