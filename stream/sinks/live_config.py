"""Config sections of the outputs that serve viewers and operators: `metrics:`, `web:`, `rtsp:`.

Kept out of stream/config.py (which only names them) so that module stays the schema's
overview; every server binds to 127.0.0.1 unless a config says otherwise.
"""
from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

LOOPBACK = "127.0.0.1"


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError(f"must be an IP address to listen on, like 127.0.0.1 or 0.0.0.0, got {value!r}") from None
    return value


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = LOOPBACK  # 0.0.0.0 serves every interface: anyone who reaches it can watch

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return _host(value)


class MetricsConfig(_Server):
    port: int = Field(9108, ge=0, le=65535)  # Prometheus /metrics; 0: any free port


class WebConfig(_Server):
    port: int = Field(8080, ge=0, le=65535)  # page at /, MJPEG at /stream/<id>.mjpg; 0: any free port
    max_clients: int = Field(32, ge=1, le=1024)  # more are answered 503: each holds a thread
    send_timeout_s: float = Field(10.0, gt=0)  # a client that takes no data this long is dropped


class RtspConfig(_Server):
    port: int = Field(8554, ge=0, le=65535)  # rtsp://HOST:PORT/<stream id>; 0: any free port
    key_interval_s: float = Field(0.5, gt=0, le=10)  # a late client starts at the next key frame
    bitrate_kbps: int | None = Field(None, ge=50, le=100000)  # H.264 bit rate; null: x264enc's default, 2048
    queue: int = Field(8, ge=1, le=256)  # frames waiting for the encoder process; older ones dropped


def mount_problem(stream_id: str) -> str | None:
    """Why `stream_id` cannot be an RTSP mount (a URL path segment), or None."""
    if stream_id in (".", ".."):
        return f"stream id {stream_id!r} is not a valid RTSP mount name (a URL path segment): rename the source"
    return None
