"""The engine on Triton Inference Server: frames go over gRPC bidirectional streaming.

Each chromacast stream is one Triton sequence (sequence id: the stream id, tagged with this
process so two CPU boxes never share one). START goes with a stream's first frame and after
every reset (reconnect, gap, scene cut), END after its last. A batch sends one request per
stream, all at once, so Triton's sequence batcher batches them; a stream never has two
frames in flight, because the state makes them sequential.

With several servers, a stream is pinned to one by rendezvous hashing of its id (adding a
server moves only its share). A server that fails or does not answer within `timeout_s` is
marked down: its streams move to the others with START (fresh state), in one log line, and
counted in `failovers`. A probe thread brings it back; new streams then go to it again.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import Sequence

import numpy as np

from engines.backend import Engine, EngineError, ModelInfo, StreamState

log = logging.getLogger("chromacast.engine")


class TritonState(StreamState):
    def __init__(self, size: tuple[int, int]):
        super().__init__(size)
        self.server: _Server | None = None
        self.start = True  # the next request carries START
        self.sent = False


class _Server:
    """One Triton server: its client, its open stream and the responses that came back."""

    def __init__(self, url: str, timeout_s: float):
        import tritonclient.grpc as grpcclient

        self.url, self.timeout_s = url, timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self.alive = False  # answering; False once its stream broke
        self.opened = False  # a stream is open (closed once on failure)
        self.cond = threading.Condition()
        self.results: dict[str, tuple] = {}
        self.waiting: set[str] = set()

    def check(self, model: str) -> dict:
        """The model's config (as JSON); EngineError (one line) when unusable."""
        from tritonclient.utils import InferenceServerException

        try:
            if not self.client.is_server_live(client_timeout=self.timeout_s):
                raise EngineError(f"triton: server {self.url} is not live")
            if not self.client.is_model_ready(model, client_timeout=self.timeout_s):
                raise EngineError(f"triton: model {model!r} is not ready on {self.url} "
                                  "(not in its repository, or it failed to load)")
            return self.client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)["config"]
        except InferenceServerException as exc:
            raise EngineError(f"triton: server {self.url} unreachable ({_first_line(exc)})") from None

    def open(self) -> None:
        self.client.start_stream(callback=self._on_response)
        self.alive = self.opened = True

    def _on_response(self, result, error) -> None:
        rid = result.get_response().id if result is not None else None
        with self.cond:
            if rid is None:  # the stream itself broke: every waiting request failed
                self.alive = False
                for pending in self.waiting:
                    self.results[pending] = (None, error)
            elif rid in self.waiting:
                self.results[rid] = (result, error)
            self.cond.notify_all()

    def send(self, model: str, rid: str, inputs: list, sequence: str, start: bool, end: bool = False,
             wait: bool = True) -> None:
        with self.cond:
            if wait:
                self.waiting.add(rid)
        self.client.async_stream_infer(model, inputs, request_id=rid, sequence_id=sequence,
                                       sequence_start=start, sequence_end=end)

    def wait(self, rid: str, deadline: float):
        """The result for `rid`, or None when it failed or did not come in time."""
        with self.cond:
            self.cond.wait_for(lambda: rid in self.results, max(0.0, deadline - time.monotonic()))
            self.waiting.discard(rid)
            result, error = self.results.pop(rid, (None, "timeout"))
        if error is not None:
            log.debug("triton %s: request %s: %s", self.url, rid, error)
            return None
        return result

    def close(self) -> None:
        self.alive = self.opened = False
        try:
            self.client.stop_stream(cancel_requests=True)
        except Exception:  # a dead server's stream may fail to stop cleanly; it is abandoned
            pass
        with self.cond:
            self.results.clear()
            self.waiting.clear()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TritonEngine(Engine):
    name = "triton"

    def __init__(self, urls: str | Sequence[str], model: str = "chromacast", timeout_s: float = 10.0,
                 retry_s: float = 5.0):
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError:
            raise EngineError("engine 'triton' needs tritonclient: pip install 'chromacast[triton]'") from None
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise EngineError("triton: no server url given (engine.triton.url)")
        self.model, self.timeout_s, self.retry_s = model, timeout_s, retry_s
        self.servers = [_Server(url, timeout_s) for url in urls]
        config, errors = None, []
        for server in self.servers:
            try:
                config = server.check(model)
                server.open()
            except EngineError as exc:
                errors.append(str(exc))
        if config is None:
            raise EngineError(errors[0] if len(errors) == 1 else f"{errors[0]} (and every other server)")
        for line in errors:  # some servers answer: run on those, the probe brings back the rest
            log.warning("%s; retrying every %g s", line, retry_s)
        self._read_config(config)
        self.failovers = 0
        self._ids = itertools.count()
        self._tag = f"{socket.gethostname()}:{os.getpid()}"
        self._closed = threading.Event()
        self._probe = threading.Thread(target=self._probe_loop, name="triton-probe", daemon=True)
        self._probe.start()
        log.info("engine: triton, model %r on %s", model, ", ".join(urls))

    def _read_config(self, config: dict) -> None:
        """Check the model against the engine contract; read its ModelInfo and fixed size."""
        inputs = {i["name"]: i for i in config.get("input", [])}
        outputs = {o["name"] for o in config.get("output", [])}
        if "L" not in inputs or "ab" not in outputs:
            raise EngineError(f"triton: model {self.model!r} does not follow the chromacast engine contract "
                              f"(inputs {sorted(inputs)}, outputs {sorted(outputs)}; expected L → ab)")
        params = {k.removeprefix("chromacast."): v["string_value"]
                  for k, v in config.get("parameters", {}).items() if k.startswith("chromacast.")}
        params["chromacast.contract"] = params.pop("contract", "")
        self.info = ModelInfo.from_metadata(params)
        dims = [int(d) for d in inputs["L"]["dims"]]
        self.fixed_size = (dims[2], dims[1]) if min(dims[1:]) > 0 else None  # onnxruntime model: fixed
        # hints: optional in the python model; always sent (zeros) where the model requires them
        self.hints_required = not all(inputs.get(n, {}).get("optional", False) for n in ("hint_ab", "hint_mask"))

    # --- engine interface --------------------------------------------------------------------
    def network_size(self, width: int, height: int, short_side: int | None = None) -> tuple[int, int]:
        return self.fixed_size or super().network_size(width, height, short_side)

    def new_state(self, size: tuple[int, int]) -> TritonState:
        return TritonState(size)

    def reset_state(self, state: StreamState) -> None:
        state.start = True

    def end_state(self, state: StreamState) -> None:
        """END for the stream's sequence: a request without a frame, not waited for."""
        server = state.server
        if server is None or not server.alive or not state.sent:
            return
        w, h = self.fixed_size or (0, 0)
        try:
            server.send(self.model, f"end-{next(self._ids)}", self._inputs(np.zeros((1, 1, h, w), np.float32)),
                        self._sequence(state), start=False, end=True, wait=False)
        except Exception as exc:  # Triton's idle timeout frees it anyway
            log.debug("triton %s: END for %s failed: %s", server.url, state.stream, exc)
        state.server, state.sent = None, False

    def infer(self, L: np.ndarray, states: Sequence[StreamState], hint_ab: np.ndarray | None = None,
              hint_mask: np.ndarray | None = None) -> np.ndarray:
        b, _, h, w = L.shape
        ab = np.empty((b, 2, h // self.info.ab_stride, w // self.info.ab_stride), np.float32)
        pending = list(range(b))
        while pending:  # a row whose server failed goes again, to another server, with START
            sent = []
            for i in pending:
                rows = (L[i:i + 1],) + ((hint_ab[i:i + 1], hint_mask[i:i + 1]) if hint_ab is not None else ())
                sent.append((i, self._send(states[i], *rows)))
            deadline = time.monotonic() + self.timeout_s
            pending = []
            for i, (server, rid) in sent:
                result = server.wait(rid, deadline) if rid else None
                if result is None:
                    self._failed(server)
                    pending.append(i)
                    continue
                ab[i] = result.as_numpy("ab")[0]
                states[i].start, states[i].sent = False, True
        return ab

    def _send(self, state: TritonState, L: np.ndarray, hint_ab: np.ndarray | None = None,
              hint_mask: np.ndarray | None = None) -> tuple[_Server, str | None]:
        if state.server is None or not state.server.alive:
            if state.server is not None:
                self._failed(state.server)
                state.start = True  # its state stayed on the failed server
            state.server = self._pick(state.stream)
        rid = f"{state.stream}-{next(self._ids)}"
        try:
            state.server.send(self.model, rid, self._inputs(L, hint_ab, hint_mask), self._sequence(state),
                              state.start)
        except Exception:  # the stream broke before this request: the same as no answer
            return state.server, None
        return state.server, rid

    def _inputs(self, L: np.ndarray, hint_ab: np.ndarray | None = None, hint_mask: np.ndarray | None = None):
        import tritonclient.grpc as grpcclient

        if hint_ab is None and self.hints_required and L.size:
            b, _, h, w = L.shape
            hint_ab, hint_mask = np.zeros((b, 2, h, w), np.float32), np.zeros((b, 1, h, w), np.float32)
        tensors = [("L", L)] + ([("hint_ab", hint_ab), ("hint_mask", hint_mask)] if hint_ab is not None else [])
        inputs = []
        for name, array in tensors:
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32))
            inputs.append(tensor)
        return inputs

    def _sequence(self, state: TritonState) -> str:
        return f"{state.stream}@{self._tag}"

    def _pick(self, stream: str) -> _Server:
        """Rendezvous hashing over the live servers: the highest score for this stream wins."""
        alive = [s for s in self.servers if s.alive]
        if not alive:
            raise EngineError(f"triton: no server answering ({', '.join(s.url for s in self.servers)})")
        return max(alive, key=lambda s: hashlib.blake2b(f"{s.url}|{stream}".encode(), digest_size=8).digest())

    def _failed(self, server: _Server) -> None:
        if not server.opened:
            return  # already handled for an earlier row of this batch
        server.close()
        self.failovers += 1
        others = sum(s.alive for s in self.servers)
        log.warning("triton %s stopped answering (failed, or nothing within %g s): its streams move to %d "
                    "other server(s) with fresh state", server.url, self.timeout_s, others)

    def _probe_loop(self) -> None:
        while not self._closed.wait(self.retry_s):
            for server in self.servers:
                if server.alive:
                    continue
                try:
                    server.check(self.model)
                    server.open()
                    log.info("triton %s: back; new streams go to it again", server.url)
                except Exception:
                    pass

    def close(self) -> None:
        self._closed.set()
        for server in self.servers:
            server.close()
            try:
                server.client.close()
            except Exception:
                pass


def open_triton(options) -> TritonEngine:
    """A TritonEngine from a config section (engine.triton: url, model, timeout_s, retry_s)."""
    if options is None:
        raise EngineError("engine 'triton' needs an engine.triton section (url: HOST:PORT, model: NAME)")
    get = options.get if isinstance(options, dict) else lambda k, d=None: getattr(options, k, d)
    return TritonEngine(get("url"), get("model", "chromacast"), get("timeout_s", 10.0), get("retry_s", 5.0))
