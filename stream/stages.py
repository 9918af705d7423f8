"""The two central stages, each in its own thread:

EngineStage: batcher → per-stream state slots → Engine.predict (the network, low-resolution
ab) → the output queue; a GPU engine merges on the device (Engine.colorize) instead.
OutputStage: steady each stream's ab along the motion (engines/stabilise.py), merge it with
the full-resolution L (upsample, Lab → BGR), publish over ZeroMQ, count the frame and its latency, fan out to the sinks
that run in their own threads (recorder, window).

ONNX Runtime, OpenCV and ZeroMQ release the GIL, so these threads and the ingest threads
overlap on a multi-core CPU.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from engines.backend import Engine
from engines.colour import network_l8
from engines.colour import scale_chroma
from engines.stabilise import Stabilisers
from stream.batcher import Batcher
from stream.frame import Frame, StreamEnd
from stream.queues import BoundedQueue, QueueClosed
from stream.sinks.base import Sink
from stream.state import StateSlots
from stream.stats import Stats

log = logging.getLogger("chromacast.stages")

EVICT_EVERY_S = 1.0


class EngineStage(threading.Thread):
    def __init__(self, engine: Engine, batcher: Batcher, slots: StateSlots, out: BoundedQueue,
                 on_error: Callable[[str], None]):
        super().__init__(name="engine", daemon=True)
        self.engine, self.batcher, self.slots, self.out = engine, batcher, slots, out
        self._on_error = on_error
        self.batches = 0
        self.batched_frames = 0

    def run(self) -> None:
        next_evict = time.monotonic() + EVICT_EVERY_S
        try:
            while True:
                gathered = self.batcher.gather(timeout=0.25)
                if gathered is None:
                    break
                for group in gathered.groups:
                    self._colorize(group)
                for end in gathered.ends:
                    self.slots.end(end.stream)
                    self.out.put(end, force=True)
                if time.monotonic() >= next_evict:
                    self.slots.evict_idle()
                    next_evict = time.monotonic() + EVICT_EVERY_S
        except QueueClosed:
            pass
        except Exception as exc:  # the engine itself failed: nothing more can be colorized
            text = str(exc).splitlines()[0] if str(exc) else ""
            self._on_error(f"engine failed: {type(exc).__name__}: {text}")
        finally:
            self.out.close()

    def _colorize(self, group: list[Frame]) -> None:
        states, hints = [], []
        for frame in group:
            frame.header.stamp("batch")
            state, frame_hints = self.slots.take(frame)
            frame.hinted = bool(frame_hints)
            states.append(state)
            hints.append(frame_hints)
        l8 = [f.l8 for f in group]
        hints = hints if any(hints) else None
        if self.engine.merges_on_device:
            for frame, colour in zip(group, self.engine.colorize(l8, states, hints)):
                frame.colour = colour
        else:  # the full-resolution merge runs on the output thread, overlapping the next batch
            # resized here, once: the network's input and the stabiliser's flow both use it
            l_net = [network_l8(f, states[0].size) for f in l8]
            ab = self.engine.predict(l_net, states, hints)
            for i, frame in enumerate(group):
                frame.ab, frame.l_net = ab[i], l_net[i]
        self.batches += 1
        self.batched_frames += len(group)
        for frame in group:
            frame.header.stamp("engine")
            self.out.put(frame)


class OutputStage(threading.Thread):
    def __init__(self, source: BoundedQueue, stats: Stats, publisher: Sink | None,
                 sink_queues: list[BoundedQueue], on_error: Callable[[str], None],
                 merge: Callable[..., np.ndarray] = Engine.merge,
                 stabilisers: Stabilisers | None = None, saturation: float = 1.0):
        """`sink_queues`: the queues of the sinks that run on their own (recorder, window);
        `merge`: the engine's merge of full-resolution L with low-resolution ab;
        `stabilisers`: per-stream colour stabilisers (None: off); `saturation`: chroma scale
        of what is shown (an attribute: the live window changes it while running)."""
        super().__init__(name="output", daemon=True)
        self.saturation = saturation
        self.merge = merge
        self.stabilisers = stabilisers
        self.source, self.stats, self.publisher, self.sink_queues = source, stats, publisher, sink_queues
        self._on_error = on_error

    def run(self) -> None:
        publisher = self.publisher
        try:
            while True:
                try:
                    item = self.source.get()
                except QueueClosed:
                    break
                if isinstance(item, StreamEnd):
                    if self.stabilisers is not None:
                        self.stabilisers.end(item.stream)
                    if publisher:
                        publisher.end_stream(item)
                    for queue in self.sink_queues:
                        queue.put(item, force=True)
                    continue
                if item.colour is None:
                    ab = item.ab
                    if self.stabilisers is not None:
                        header = item.header
                        ab = self.stabilisers.apply(header.stream, item.l_net, ab, header.reset or item.hinted)
                    # after the stabiliser, which must carry the network's own colours
                    # a stabilised ab is at the network input's size: its L plane is at hand
                    l_small = item.l_net if item.l_net is not None and item.l_net.shape == ab.shape[1:] else None
                    item.colour = self.merge(item.l8, scale_chroma(ab, self.saturation), l_small)
                    item.l_net = None
                    item.ab = None
                if publisher:
                    publisher.write(item)
                stages = item.header.stages
                self.stats.frame_out(item.header, stages.get("publish") or stages["engine"])
                for queue in self.sink_queues:
                    queue.put(item)
        except Exception as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            self._on_error(f"output failed: {type(exc).__name__}: {text}")
            self.source.close()
        finally:
            for queue in self.sink_queues:
                queue.close()
            if publisher:
                try:
                    publisher.close()
                except Exception as exc:
                    self._on_error(f"publish: {exc}")
