"""Queues, batcher and per-stream state slots, each on its own (with the real engine)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engines.colour import to_l8
from engines.hints import Hint
from stream.batcher import Batcher
from stream.config import HintsConfig, StateConfig
from stream.frame import Frame, FrameHeader, StreamEnd
from stream.queues import BoundedQueue, Overflow, QueueClosed
from stream.state import StateSlots


def frame(stream: str, seq: int, width: int = 64, height: int = 48, epoch: int = 0, value: int = 0) -> Frame:
    image = np.full((height, width), value, np.uint8)
    return Frame(FrameHeader(stream, seq, time.time_ns(), width, height, 25.0, epoch), image, to_l8(image))


def test_drop_oldest_queue_keeps_newest_and_counts():
    dropped = []
    queue = BoundedQueue(2, Overflow.DROP_OLDEST, on_drop=dropped.append)
    for i in range(5):
        assert queue.put(i)
    assert queue.dropped == 3 and dropped == [0, 1, 2]
    assert [queue.get(0), queue.get(0)] == [3, 4]


def test_blocking_queue_applies_backpressure_and_loses_nothing():
    queue = BoundedQueue(2, Overflow.BLOCK)
    assert queue.put(1) and queue.put(2)
    assert queue.put(3, timeout=0.05) is False  # full: the producer waits
    got = []

    def consume():
        for _ in range(50):
            got.append(queue.get(5))

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(3, 51):
        assert queue.put(i, timeout=5)
    consumer.join(10)
    assert got == list(range(1, 51)) and queue.dropped == 0


def test_closed_queue_drains_then_reports_closed():
    queue = BoundedQueue(4)
    queue.put("a")
    queue.close()
    with pytest.raises(QueueClosed):
        queue.put("b")
    assert queue.get(0) == "a"
    with pytest.raises(QueueClosed):
        queue.get(0)


def test_forced_put_ignores_capacity():
    queue = BoundedQueue(1, Overflow.DROP_OLDEST)
    queue.put("frame")
    queue.put("end", force=True)
    assert queue.dropped == 0 and len(queue) == 2


def size_of(f: Frame) -> tuple[int, int]:
    return (f.header.width, f.header.height)


def test_batch_takes_one_frame_per_stream_and_groups_by_size():
    batcher = Batcher(size_of, max_batch=8, max_wait_s=0)
    queues = {sid: batcher.add_stream(sid, 4, Overflow.BLOCK, 25.0) for sid in ("a", "b", "c")}
    batcher.no_more_streams()
    for seq in range(3):
        queues["a"].put(frame("a", seq))
        queues["b"].put(frame("b", seq))
    queues["c"].put(frame("c", 0, width=96))
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for _ in range(3):
        gathered = batcher.gather(0.1)
        for group in gathered.groups:
            assert len({size_of(f) for f in group}) == 1
            streams = [f.stream for f in group]
            assert len(streams) == len(set(streams)), "two frames of one stream in a batch"
            for f in group:
                seen[f.stream].append(f.header.seq)
    assert seen == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0]}


def test_batcher_waits_briefly_for_other_streams():
    batcher = Batcher(size_of, max_batch=8, max_wait_s=2.0)
    qa = batcher.add_stream("a", 4, Overflow.BLOCK, 25.0)
    qb = batcher.add_stream("b", 4, Overflow.BLOCK, 25.0)
    batcher.no_more_streams()
    qa.put(frame("a", 0))
    qb.put(frame("b", 0))
    batcher.gather(1.0)  # both delivering now: a stream that is not delivering is never waited for
    qa.put(frame("a", 1))
    threading.Timer(0.02, lambda: qb.put(frame("b", 1))).start()
    gathered = batcher.gather(1.0)
    assert sorted(f.stream for g in gathered.groups for f in g) == ["a", "b"]


def test_batcher_passes_stream_ends_and_finishes():
    batcher = Batcher(size_of, max_batch=8, max_wait_s=0)
    qa = batcher.add_stream("a", 4, Overflow.BLOCK, 25.0)
    batcher.no_more_streams()
    qa.put(frame("a", 0))
    qa.put(StreamEnd("a"), force=True)
    first = batcher.gather(0.1)
    assert [f.stream for g in first.groups for f in g] == ["a"] and not first.ends
    second = batcher.gather(0.1)
    assert [e.stream for e in second.ends] == ["a"]
    assert batcher.gather(0.1) is None


def slots_for(engine, **state) -> StateSlots:
    return StateSlots(engine, 64, StateConfig(**state), HintsConfig(hold_frames=2))


def test_state_slots_start_reset_and_keep_streams_apart(engine):
    slots = slots_for(engine)
    fa0, fb0 = frame("a", 0), frame("b", 0)
    state_a, _ = slots.take(fa0)
    state_b, _ = slots.take(fb0)
    assert fa0.header.reset and fb0.header.reset and state_a is not state_b
    engine.colorize([fa0.l8, fb0.l8], [state_a, state_b])  # advances both states
    fa1 = frame("a", 1)
    assert slots.take(fa1)[0] is state_a and not fa1.header.reset
    assert np.abs(state_a.array).sum() > 0
    fa2 = frame("a", 2, epoch=1)  # the source reconnected
    assert slots.take(fa2)[0] is state_a and fa2.header.reset
    assert np.abs(state_a.array).sum() == 0
    assert np.abs(state_b.array).sum() > 0  # the other stream kept its state
    fa3 = frame("a", 3, width=128, epoch=1)  # new size: new state
    assert slots.take(fa3)[0] is not state_a and fa3.header.reset
    slots.end("a")
    assert "a" not in slots.slots and "b" in slots.slots


def test_idle_streams_are_evicted(engine):
    slots = slots_for(engine, idle_timeout_s=0.05)
    slots.take(frame("a", 0))
    time.sleep(0.1)
    slots.take(frame("b", 0))
    assert slots.evict_idle() == ["a"]
    assert list(slots.slots) == ["b"]


def test_scene_cut_resets_state(engine):
    slots = slots_for(engine, scene_cut=0.2)
    slots.take(frame("a", 0, value=20))
    same = frame("a", 1, value=25)
    slots.take(same)
    cut = frame("a", 2, value=200)
    slots.take(cut)
    assert not same.header.reset and cut.header.reset


def test_hints_are_fed_for_hold_frames_then_carried_by_state(engine):
    slots = slots_for(engine)
    slots.take(frame("a", 0))
    hint = Hint.point(0.5, 0.5, 40.0, -20.0)
    slots.add_hint("a", hint)
    assert slots.take(frame("a", 1))[1] == [hint]
    assert slots.take(frame("a", 2))[1] == [hint]
    assert slots.take(frame("a", 3))[1] is None
    assert slots.take(frame("b", 0))[1] is None  # hints belong to one stream
    slots.clear_hints("a")
    cleared = frame("a", 4)
    hints = slots.take(cleared)[1]
    assert hints is None and cleared.header.reset


def test_window_panels_and_click_to_hint():
    from stream.sinks.window import PALETTE, click_to_hint, compose, palette_index

    image = np.zeros((50, 81, 4), np.uint8)  # BGRA, odd width
    image[..., 1] = 200
    f = Frame(FrameHeader("w", 0, 0, 81, 50, 25.0), image, to_l8(image))
    f.colour = np.full((50, 81, 3), (10, 20, 250), np.uint8)
    view = compose(f, 100)
    assert view.shape[1] == 300 and view.shape[2] == 3
    assert view[10, 250].tolist() == [10, 20, 250]  # the colour panel is on the right
    assert view[10, 150, 0] == view[10, 150, 1] == view[10, 150, 2]  # the grey panel is grey
    h = view.shape[0]
    left, right = click_to_hint(25, 10, 100, h, PALETTE[0]), click_to_hint(225, 10, 100, h, PALETTE[0])
    assert (left.x0, left.y0) == (right.x0, right.y0) == (0.25, 10 / h)  # same point on any panel
    assert left.a > 20  # the first swatch is red: positive a*
    assert click_to_hint(25, h + 3, 100, h, PALETTE[0]) is None  # palette strip
    assert palette_index(299, 300) == len(PALETTE) - 1 and palette_index(0, 300) == 0
