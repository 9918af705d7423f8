"""The YAML config schema: shipped configs load, errors name the key and the problem in one
line, and no input makes the loader raise anything but ConfigError."""
from __future__ import annotations


import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from stream.config import ConfigError, load_config, parse_config

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    ids = [s.id for s in config.sources]
    assert ids and len(set(ids)) == len(ids)


def test_shipped_configs_cover_every_use():
    assert {p.name for p in CONFIGS} >= {"sample.yaml", "webcam.yaml", "rtsp.yaml", "file.yaml", "multi.yaml"}


def test_sample_config_runs_the_bundled_clip_with_publisher_and_recorder():
    config = load_config(ROOT / "configs" / "sample.yaml")
    assert (ROOT / config.sources[0].file).is_file()
    assert config.publish.bind == "tcp://127.0.0.1:5555"
    assert config.record.path == str(ROOT / "out" / "{stream}.mp4")  # from the config's folder, not the cwd


def test_defaults_and_live_behaviour():
    config = parse_config("sources: [{webcam: 0}, {file: a.mp4}, {file: b.mp4, realtime: true}, {rtsp: 'rtsp://h/x'}]")
    assert [s.id for s in config.sources] == ["webcam0", "a", "b", "cam3"]
    assert [s.live for s in config.sources] == [True, False, True, True]
    assert [s.queue_size for s in config.sources] == [2, 4, 2, 2]
    assert config.publish.bind.startswith("tcp://127.0.0.1:") and config.record is None
    assert config.engine.short_side == 160


@pytest.mark.parametrize("text, message", [
    ("sources: [{file: a.mp4}]\nengin: {}", "engin: unknown key"),
    ("sources: [{file: a.mp4, webcam: 1}]", r"sources\[0\]: give exactly one of"),
    ("sources: [{}]", r"sources\[0\]: give exactly one of"),
    ("sources: [{id: x, file: a}, {id: x, file: b}]", "stream id 'x' is used twice"),
    ("sources: [{id: 'cam 1', file: a}]", r"sources\[0\]\.id"),
    ("sources: [{rtsp: 'http://cam'}]", r"sources\[0\]\.rtsp: must be an rtsp"),
    ("sources: [{file: a}]\nengine: {kind: cuda}", "engine.kind"),
    ("sources: [{file: a}]\nrecord: {path: 'out/{id}.mp4'}", "record.path: only the placeholder"),
    ("sources: [{file: a}]\nstate: {gap_s: -1}", "state.gap_s: Input should be greater than 0"),
    ("sources: [{file: a}]\nstate: {stabiliser: {strength: 1}}", "state.stabiliser.strength: Input should be less than 1"),
    ("sources: [{file: a}]\nstate: {stabiliser: {flow: slow}}",
     "state.stabiliser.flow: Input should be 'ultrafast', 'fast' or 'medium'"),
    ("engine: {}", "sources: required key is missing"),
    ("- just a list", "top level must be a mapping"),
    ("sources: [", "invalid YAML"),
])
def test_errors_name_key_and_problem_in_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_config(text, "test.yaml")
    assert "\n" not in str(error.value) and str(error.value).startswith("test.yaml: ")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_merge_into_sections():
    config = parse_config("sources: [{file: a}]\nengine: {short_side: 224, threads: 2}",
                          overrides={"engine": {"short_side": 96}, "publish": None})
    assert (config.engine.short_side, config.engine.threads, config.publish) == (96, 2, None)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["sources", "file", "webcam", "rtsp", "folder", "id", "fps", "engine", "kind",
                         "short_side", "publish", "bind", "record", "path", "window", "state", "x"]),
        children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_values)
def test_fuzz_structured_configs_only_config_error(value):
    try:
        parse_config(yaml.safe_dump(value), "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_raw_text_only_config_error(text):
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)
