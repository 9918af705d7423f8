"""The pipeline's YAML schema (the one place that defines it) and its loader.

pydantic validates the file: it reports the exact key and problem, and unknown keys are
errors (a typo must not be silently ignored). Relative paths in a config file are taken from
the file's folder; those given on the command line, from the current directory. `load_config` raises ConfigError, and nothing else, with one line for the user.
"""
from __future__ import annotations

import copy
import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines.stabilise import FLOW_PRESETS, StabiliserSettings
from stream.protocol import MIN_FPS, STREAM_ID_PATTERN
from stream.security import SecurityConfig
from stream.sinks.live_config import MetricsConfig, RtspConfig, WebConfig, mount_problem
from stream.textdata import load_yaml

SOURCE_KINDS = ("webcam", "rtsp", "file", "folder")


class ConfigError(ValueError):
    """A configuration that cannot be used; str() is one line naming the key and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReconnectConfig(Strict):
    """How a live source (webcam, RTSP) behaves when its camera drops out."""

    initial_delay_s: float = Field(0.5, gt=0)  # first retry after this; doubles up to max_delay_s
    max_delay_s: float = Field(8.0, gt=0)
    give_up_after_s: float | None = Field(60.0, gt=0)  # end the stream after this long without camera; null: never
    open_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)  # a camera silent this long counts as dropped


class SourceConfig(Strict):
    """One input stream: exactly one of webcam, rtsp, file, folder."""

    id: str | None = Field(None, pattern=f"^{STREAM_ID_PATTERN}$")
    webcam: int | None = Field(None, ge=0, strict=True)  # strict: `true` is not camera 1
    rtsp: str | None = None
    file: Path | None = None
    folder: Path | None = None
    fps: float | None = Field(None, ge=MIN_FPS, le=1000)  # folder: frame rate (default 25); webcam: requested
    width: int | None = Field(None, gt=0)  # webcam: requested capture size
    height: int | None = Field(None, gt=0)
    loop: bool = False  # file, folder: start again at the end
    realtime: bool = False  # file, folder: pace at fps and behave like a live camera (drop oldest)
    max_frames: int | None = Field(None, gt=0)  # end the stream after this many frames
    queue: int | None = Field(None, ge=1, le=256)  # frames waiting for the engine; default 2 live, 4 file
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    reference: str | None = None  # colour reference image, or "auto": a fixed camera's own colour frames

    @field_validator("rtsp")
    @classmethod
    def _rtsp_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^rtsps?://[^/\s]+", url):
            raise ValueError(f"must be an rtsp:// or rtsps:// URL, got {url!r}")
        return url

    @model_validator(mode="after")
    def _one_kind(self) -> "SourceConfig":
        given = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCE_KINDS)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def camera(self) -> bool:
        """A webcam or RTSP camera: it can be down for a while and come (back) up."""
        return self.kind in ("webcam", "rtsp")

    @property
    def live(self) -> bool:
        """Live sources drop the oldest waiting frame under overload; the others never drop."""
        return self.camera or self.realtime

    @property
    def queue_size(self) -> int:
        return self.queue or (2 if self.live else 4)

    def default_id(self, position: int) -> str:
        if self.kind in ("file", "folder"):
            stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(getattr(self, self.kind)).stem).lstrip(".-")[:64]
            if stem:
                return stem
        if self.kind == "webcam":
            return f"webcam{self.webcam}"
        return f"cam{position}"


class TritonConfig(Strict):
    """engine: triton (docs/triton.md): the network runs on Triton Inference Server(s)."""

    url: str | list[str] = "127.0.0.1:8001"  # gRPC HOST:PORT, or a list: streams pinned across servers
    model: str = "chromacast"  # model name in the servers' repository (chromacast triton-repo)
    timeout_s: float = Field(10.0, gt=0)  # a server that does not answer in this long is failed over
    retry_s: float = Field(5.0, gt=0)  # probe a failed server this often


class EngineConfig(Strict):
    kind: Literal["auto", "tensorrt", "onnxruntime", "triton"] = "auto"
    triton: TritonConfig | None = None  # kind: triton; the defaults when left out
    model: Path | None = None  # ONNX file; null: the shipped default model
    short_side: int = Field(160, ge=32, le=2048)  # network input's short side (speed vs detail)
    threads: int | None = Field(None, ge=1, le=256)  # CPU threads for ONNX Runtime; null: all cores
    # int8: ONNX Runtime runs NAME.int8.onnx beside the model (chromacast export --int8)
    precision: Literal["fp32", "int8"] = "fp32"
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float | None = Field(None, ge=0, le=1000)  # wait for a fuller batch; null: ~1 frame interval


class StabiliserConfig(Strict):
    """Flow-guided colour stabiliser after the network (engines/stabilise.py, whose defaults these are)."""

    # weight of the previous frame's colours along the motion; 0: off
    strength: float = Field(StabiliserSettings.strength, ge=0, lt=1)
    # L difference (0-100) past which the network's own colours win
    tolerance: float = Field(StabiliserSettings.tolerance, gt=0, le=100)
    # DIS optical flow preset: finer carries more exactly, costs more
    flow: Literal[tuple(FLOW_PRESETS)] = StabiliserSettings.flow


class StateConfig(Strict):
    idle_timeout_s: float = Field(30.0, gt=0)  # free a stream's state after this long without frames
    gap_s: float = Field(1.0, gt=0)  # live: a pause this long restarts the stream's state from zero
    scene_cut: float = Field(0.0, ge=0, le=1)  # cut score (0..1, stream/scenecut.py) that starts a new shot; 0: off
    stabiliser: StabiliserConfig = Field(default_factory=StabiliserConfig)


class HintsConfig(Strict):
    hold_frames: int = Field(1, ge=1)  # frames a hint is fed for; the recurrent state carries it on


class PublishConfig(Strict):
    bind: str = "tcp://127.0.0.1:5555"
    sndhwm: int = Field(16, ge=1, le=100000)  # messages queued per subscriber before PUB drops for it
    jpeg_quality: int = Field(90, ge=1, le=100)
    linger_ms: int = Field(500, ge=0)  # on close, time left to flush queued messages
    # a subscriber sending more subscriptions than this is disconnected (each costs memory)
    max_subscriptions_per_peer: int = Field(64, ge=1, le=100000)
    security: SecurityConfig | None = None  # CurveZMQ server key + allowed client keys (docs/security.md)

    @field_validator("security")
    @classmethod
    def _server_keys(cls, security: SecurityConfig | None) -> SecurityConfig | None:
        if security is not None and (not security.secures_publisher or security.secures_subscriber):
            raise ValueError("give server_secret_key and allowed_clients_dir "
                             "(client_secret_key and server_public_key are subscriber options)")
        return security

    @field_validator("bind")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        if not re.match(r"^(tcp|ipc|inproc)://\S+$", url):
            raise ValueError(f"must be a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {url!r}")
        return url


class RecordConfig(Strict):
    path: str = "out/{stream}.mp4"  # {stream} becomes the stream id
    codec: str = "auto"  # auto: H.264 (libx264) when PyAV has it, else MPEG-4 part 2
    crf: int = Field(20, ge=0, le=51)  # H.264 quality (lower is better)
    preset: str = "veryfast"
    queue: int = Field(16, ge=1, le=1024)

    @field_validator("path")
    @classmethod
    def _one_file_per_stream(cls, path: str) -> str:
        # parse rather than format: a format spec such as {stream:>99999999999} would run
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(path)
                      if name is not None]
        except ValueError:
            raise ValueError(f"unbalanced braces in {path!r} (write {{{{ or }}}} for a brace)") from None
        if any(field != ("stream", "", None) for field in fields):
            raise ValueError(f"only the placeholder {{stream}} is allowed, got {path!r}")
        return path


class WindowConfig(Strict):
    width: int = Field(1280, ge=160, le=8192)  # window width for the three panels side by side


class StatsConfig(Strict):
    interval_s: float = Field(10.0, ge=0)  # log a progress line this often; 0: summary only
    latency_samples: int = Field(100000, ge=100)  # p50/p99 over the most recent frames


class PipelineConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    hints: HintsConfig = Field(default_factory=HintsConfig)
    publish: PublishConfig | None = Field(default_factory=PublishConfig)  # false or null: no ZeroMQ publisher
    record: RecordConfig | None = None
    window: WindowConfig | None = None
    web: WebConfig | None = None  # browser viewer (stream/sinks/web.py)
    rtsp: RtspConfig | None = None  # RTSP server, one mount per stream (stream/sinks/rtsp.py)
    metrics: MetricsConfig | None = None  # Prometheus /metrics (docs/metrics.md)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    duration_s: float | None = Field(None, gt=0)  # stop (and drain) after this long
    saturation: float = Field(1.0, ge=0, le=2)  # colour strength: 0 grey, 1 as predicted, up to 2

    @field_validator("publish", "record", "window", "web", "rtsp", "metrics", mode="before")
    @classmethod
    def _switch(cls, value: Any, info) -> Any:
        """`true` enables a sink with defaults, `false`/null disables it."""
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @model_validator(mode="after")
    def _recordings_lose_nothing(self) -> "PipelineConfig":
        """Each stream records to its own file, and never over one of the inputs."""
        if self.record is None:
            return self
        if len(self.sources) > 1 and "{stream}" not in self.record.path:
            raise ValueError(f"record.path {self.record.path!r} has no {{stream}}: with "
                             f"{len(self.sources)} sources every stream would write the same file")
        inputs = {Path(s.file).resolve(): i for i, s in enumerate(self.sources) if s.file is not None}
        for source in self.sources:
            target = Path(self.record.path.format(stream=source.id)).resolve()
            if target in inputs:
                raise ValueError(f"record.path {self.record.path!r} would write stream {source.id!r} "
                                 f"over the input file sources[{inputs[target]}].file ({target}): "
                                 "choose another path")
        return self

    @model_validator(mode="after")
    def _mount_names(self) -> "PipelineConfig":
        for i, source in enumerate(self.sources if self.rtsp is not None else ()):
            if mount_problem(source.id):
                raise ValueError(f"sources[{i}].id: {mount_problem(source.id)} (rtsp: serves it at /<id>)")
        return self

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for position, source in enumerate(sources):
            if source.id is None:
                source.id = source.default_id(position)
            if source.id in seen:
                raise ValueError(f"stream id {source.id!r} is used twice: give each source its own id")
            seen.add(source.id)
        return sources


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read and validate a YAML pipeline config; `overrides` (nested dict) is merged on top."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return parse_config(text, str(path), overrides, base=path.parent)


def parse_config(text: str, name: str = "config", overrides: dict | None = None,
                 base: Path | None = None) -> PipelineConfig:
    """`base`: the folder the file's relative paths are taken from (the overrides' stay as given)."""
    try:
        data = load_yaml(text)  # a key given twice is an error, not last-wins
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{name}: invalid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys (sources:, engine:, ...)")
    if base is not None:
        data = _rebased(data, base.resolve())
    if overrides:
        data = merge(data, overrides)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{name}: {describe_error(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _rebased(data: dict, base: Path) -> dict:
    """The config with its relative paths made absolute from `base`, so that it runs from any folder."""
    def rebase(value: Any) -> Any:
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            return os.path.normpath(base / value)
        return value

    def rebase_keys(section: Any, keys: tuple[str, ...]) -> None:
        if isinstance(section, dict):
            for key in keys:
                if key in section:
                    section[key] = rebase(section[key])

    data = copy.deepcopy(data)
    sources = data.get("sources")
    for source in sources if isinstance(sources, list) else []:
        rebase_keys(source, ("file", "folder"))
    rebase_keys(data.get("engine"), ("model",))
    rebase_keys(data.get("record"), ("path",))
    publish = data.get("publish")
    if isinstance(publish, dict):
        rebase_keys(publish.get("security"), ("server_secret_key", "allowed_clients_dir"))
    return data


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_error(exc: ValidationError) -> str:
    """'sources[0].fps: Input should be a valid number (got 'abc')' for the first error."""
    errors = exc.errors()
    first = errors[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    elif first["type"] != "value_error" and "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {str(first['input'])[:60]!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where or 'top level'}: {message}{more}".replace("\n", " ")
