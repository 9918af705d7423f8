"""Per-stream recurrent state slots in front of the engine (like Triton's sequence batcher).

A stream's first frame, a new epoch from its source (reconnect, gap, loop), a change of
network size, a scene cut or a cleared hint set start it from zero state. End of stream
frees the slot; a stream idle past `idle_timeout_s` is evicted. The slots also hold the
user's colour hints for each stream: a hint is fed with the next `hold_frames` frames and
the recurrent state carries it on from there.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from engines.backend import Engine, StreamState
from engines.hints import Hint
from stream.config import HintsConfig, StateConfig
from stream.frame import Frame
from stream.scenecut import SceneCutDetector

log = logging.getLogger("chromacast.state")

@dataclass
class Slot:
    state: StreamState
    size: tuple[int, int]
    epoch: int
    last_used: float
    cuts: SceneCutDetector | None = None


@dataclass
class _Hints:
    active: list[Hint] = field(default_factory=list)
    frames_left: int = 0
    clear_state: bool = False


class StateSlots:
    """Owned by the engine thread; add_hint/clear_hints may be called from any thread."""

    def __init__(self, engine: Engine, short_side: int, state: StateConfig, hints: HintsConfig):
        self.engine, self.short_side = engine, short_side
        self.idle_timeout_s = state.idle_timeout_s
        self.scene_cut = state.scene_cut
        self.hold_frames = hints.hold_frames
        self.slots: dict[str, Slot] = {}
        self._hints: dict[str, _Hints] = {}
        self._hint_lock = threading.Lock()
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        self.resets = 0

    def network_size(self, frame: Frame) -> tuple[int, int]:
        key = (frame.header.width, frame.header.height)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = self.engine.network_size(*key, self.short_side)
        return size

    def take(self, frame: Frame) -> tuple[StreamState, list[Hint] | None]:
        """The state to colorize `frame` with (zeroed when the stream must start afresh, which
        sets frame.header.reset) and the hints to feed with it."""
        header = frame.header
        size = self.network_size(frame)
        now = time.monotonic()
        slot = self.slots.get(header.stream)
        hints, clear_state = self._pop_hints(header.stream)
        if slot is None or slot.size != size:
            cuts = SceneCutDetector(self.scene_cut) if self.scene_cut > 0 else None
            if slot is not None:
                self.engine.end_state(slot.state)
            slot = self.slots[header.stream] = Slot(self.engine.new_state(size), size, header.epoch, now, cuts)
            slot.state.stream = header.stream
            header.reset = True
        cut = slot.cuts.update(frame.l8) if slot.cuts else False
        if not header.reset and (slot.epoch != header.epoch or clear_state or cut):
            self.engine.reset_state(slot.state)
            slot.epoch = header.epoch
            header.reset = True
        if header.reset:
            self.resets += 1
        slot.last_used = now
        return slot.state, hints

    def end(self, stream_id: str) -> None:
        slot = self.slots.pop(stream_id, None)
        if slot is not None:
            self.engine.end_state(slot.state)
        with self._hint_lock:
            self._hints.pop(stream_id, None)

    def evict_idle(self) -> list[str]:
        """Free the state of streams idle past the timeout; returns their ids."""
        limit = time.monotonic() - self.idle_timeout_s
        idle = [sid for sid, slot in self.slots.items() if slot.last_used < limit]
        for sid in idle:
            self.engine.end_state(self.slots.pop(sid).state)
            log.info("%s: idle for %g s, state freed", sid, self.idle_timeout_s)
        return idle

    def add_hint(self, stream_id: str, hint: Hint) -> None:
        with self._hint_lock:
            entry = self._hints.setdefault(stream_id, _Hints())
            entry.active.append(hint)
            entry.frames_left = self.hold_frames

    def clear_hints(self, stream_id: str) -> None:
        """Forget the stream's hints, including what its state carries (the state restarts)."""
        with self._hint_lock:
            self._hints[stream_id] = _Hints(clear_state=True)

    def _pop_hints(self, stream_id: str) -> tuple[list[Hint] | None, bool]:
        with self._hint_lock:
            entry = self._hints.get(stream_id)
            if entry is None:
                return None, False
            clear, entry.clear_state = entry.clear_state, False
            if entry.frames_left <= 0:
                return None, clear
            entry.frames_left -= 1
            hints = list(entry.active)
            if entry.frames_left == 0:
                entry.active.clear()
            return hints, clear
