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
from engines.colour import network_l8, scale_chroma
from engines.hints import Hint, HintCarrier, HintMaps, rasterise, user_hinted
from engines.reference import blend
from engines.stabilise import Stabilisers
from stream.batcher import Batcher
from stream.frame import Frame, StreamEnd
from stream.queues import BoundedQueue, QueueClosed
from stream.reference import StreamReferences
from stream.sinks.base import Sink
from stream.state import StateSlots
from stream.stats import Stats

log = logging.getLogger("chromacast.stages")

EVICT_EVERY_S = 1.0


class EngineStage(threading.Thread):
    def __init__(self, engine: Engine, batcher: Batcher, slots: StateSlots, out: BoundedQueue,
                 on_error: Callable[[str], None], references: StreamReferences | None = None):
        super().__init__(name="engine", daemon=True)
        self.engine, self.batcher, self.slots, self.out = engine, batcher, slots, out
        self.references = references
        self._on_error = on_error
        self.batches = 0
        self.batched_frames = 0
        self._carriers: dict[str, HintCarrier] = {}  # streams whose hints are carried along the motion

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
                    self._carriers.pop(end.stream, None)
                    self.out.put(end, force=True)
                if time.monotonic() >= next_evict:
                    for stream_id in self.slots.evict_idle():
                        self._carriers.pop(stream_id, None)
                    next_evict = time.monotonic() + EVICT_EVERY_S
        except QueueClosed:
            pass
        except Exception as exc:  # the engine itself failed: nothing more can be colorized
            text = str(exc).splitlines()[0] if str(exc) else ""
            self._on_error(f"engine failed: {type(exc).__name__}: {text}")
        finally:
            self.out.close()

    def _colorize(self, group: list[Frame]) -> None:
        everything, refs = group, self.references
        if refs is not None:  # `reference: auto`: colour frames are shown as they came
            for frame in group:
                if refs.passes_through(frame.stream, frame.image):
                    frame.header.stamp("batch")
                    frame.colour = _bgr8(frame.image)
            group = [f for f in group if f.colour is None]
        if group:
            self._run_network(group)
            self.batches += 1
            self.batched_frames += len(group)
        for frame in everything:
            frame.header.stamp("engine")
            self.out.put(frame)

    def _run_network(self, group: list[Frame]) -> None:
        states, hints = [], []
        refs = self.references
        for frame in group:
            frame.header.stamp("batch")
            state, frame_hints = self.slots.take(frame)
            if refs is not None and refs.restarts(frame.stream) and not frame.header.reset:
                self.engine.reset_state(state)  # back to grey after colour frames: start afresh
                frame.header.reset = True
            frame.hinted = user_hinted(frame_hints)
            states.append(state)
            hints.append(frame_hints)
        l8 = [f.l8 for f in group]
        # resized here, once: the network's input, the reference match and the stabiliser's flow use it
        l_net = [network_l8(f, states[0].size) for f in l8] if refs or not self.engine.merges_on_device else None
        matches = [refs.match(f.stream, l) for f, l in zip(group, l_net)] if refs else [None] * len(group)
        if self.engine.merges_on_device:  # the reference steers through the hints only
            for i, m in enumerate(matches):
                if m is not None and m.mask.any():  # the reference's colours first: a user's hint stays on top
                    hints[i] = [m.hint()] + (hints[i] or [])
            for frame, colour in zip(group, self.engine.colorize(l8, states, hints if any(hints) else None)):
                frame.colour = colour
        else:  # the full-resolution merge runs on the output thread, overlapping the next batch
            size = states[0].size
            maps = []
            for i, frame in enumerate(group):  # the user's hints carried through the shot, over the reference's
                user = self._carried_hints(frame, l_net[i], hints[i], size)
                m = matches[i]
                if m is None or not m.mask.any():
                    maps.append(user)
                else:
                    reference = rasterise([m.hint()], *size)
                    maps.append(reference if user is None else _over(reference, user))
            ab = self.engine.predict(l_net, states, hint_maps=maps)
            for i, frame in enumerate(group):
                frame.ab, frame.l_net = (ab[i] if matches[i] is None else blend(ab[i], matches[i])), l_net[i]


    def _carried_hints(self, frame: Frame, l_net: np.ndarray, new: list | None,
                       size: tuple[int, int]) -> HintMaps | None:
        """The hint maps for this frame: its new hints over the stream's earlier ones moved along
        the motion; they hold until the state restarts (scene cut, gap, hints cleared)."""
        carrier = self._carriers.get(frame.stream)
        if carrier is not None and frame.header.reset:
            carrier.reset()
        if not new and (carrier is None or not carrier.active):
            return None
        if carrier is None:
            carrier = self._carriers[frame.stream] = HintCarrier()
        return carrier.step(l_net, rasterise(new, *size) if new else None)


def _over(below: HintMaps, above: HintMaps) -> HintMaps:
    """Hint maps with `above` laid over `below` where it has hints."""
    on = above[1][0] > 0
    below[0][:, on] = above[0][:, on]
    below[1][:, on] = above[1][:, on]
    return below


def _bgr8(image: np.ndarray) -> np.ndarray:
    """A captured colour frame as 8-bit BGR (what the sinks take)."""
    bgr = image[:, :, :3] if image.shape[2] > 3 else image
    return (bgr >> 8).astype(np.uint8) if bgr.dtype == np.uint16 else np.ascontiguousarray(bgr)




class OutputStage(threading.Thread):
    def __init__(self, source: BoundedQueue, stats: Stats, publisher: Sink | None,
                 sink_queues: list[BoundedQueue], on_error: Callable[[str], None],
                 merge: Callable[..., np.ndarray] = Engine.merge,
                 stabilisers: Stabilisers | None = None, saturation: float = 1.0,
                 idle_timeout_s: float = 30.0):
        """`sink_queues`: the queues of the sinks that run on their own (recorder, window);
        `merge`: the engine's merge of full-resolution L with low-resolution ab;
        `stabilisers`: per-stream colour stabilisers (None: off); `saturation`: chroma scale
        of what is shown (an attribute: the live window changes it while running)."""
        super().__init__(name="output", daemon=True)
        self.saturation = saturation
        self.idle_timeout_s = idle_timeout_s
        self.merge = merge
        self.stabilisers = stabilisers
        self.source, self.stats, self.publisher, self.sink_queues = source, stats, publisher, sink_queues
        self._on_error = on_error

    def run(self) -> None:
        publisher = self.publisher
        next_evict = time.monotonic() + EVICT_EVERY_S
        try:
            while True:
                if self.stabilisers is not None and time.monotonic() >= next_evict:
                    self.stabilisers.evict_idle(self.idle_timeout_s)
                    next_evict = time.monotonic() + EVICT_EVERY_S
                try:
                    item = self.source.get(timeout=EVICT_EVERY_S)
                except QueueClosed:
                    break
                except TimeoutError:  # nothing for a while: time to look for idle streams
                    continue
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
