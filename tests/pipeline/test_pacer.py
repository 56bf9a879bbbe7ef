"""Outbound pacing: an absolute 20 ms clock, no burst at the start, clear and stale generations."""

from __future__ import annotations

import asyncio
import time

from runtime.pipeline.pacer import MIN_GAP_S, Frame, Pacer, ticker


class Sink:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.frames: list[Frame] = []

    async def __call__(self, frame: Frame) -> None:
        self.times.append(time.monotonic())
        self.frames.append(frame)


async def test_frames_go_out_on_a_20ms_clock_without_a_burst() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    pacer.start()
    for i in range(25):
        pacer.push(bytes([i]) * 160)
    pacer.push_mark("end")
    while pacer.busy:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.01)
    await pacer.close()
    audio = [t for t, f in zip(sink.times, sink.frames, strict=True) if f.payload is not None]
    assert len(audio) == 25 and sink.frames[-1].mark == "end"
    assert audio[9] - audio[0] >= 0.15  # generous: 9 intervals of 20 ms, no burst
    assert audio[-1] - audio[0] < 0.8
    gaps = [b - a for a, b in zip(audio, audio[1:], strict=False)]
    assert min(gaps) > 0.005
    assert pacer.stats.frames_sent == 25 and pacer.stats.marks_sent == 1


async def test_an_idle_pacer_sends_the_first_frame_at_once_and_the_rest_on_the_grid() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    pacer.start()
    for line in range(3):
        for i in range(5):
            pacer.push(bytes([line * 10 + i]) * 160)
        await asyncio.sleep(0)
        assert len(sink.times) == line * 5 + 1  # sent on the next loop turn, not held for the 20 ms tick
        while pacer.busy:
            await asyncio.sleep(0.005)
        first, second = sink.times[line * 5], sink.times[line * 5 + 1]
        assert second - first >= 0.005  # then the grid: never two frames back to back
        await asyncio.sleep(0.05)  # idle again
    assert [f.payload[0] for f in sink.frames] == [line * 10 + i for line in range(3) for i in range(5)]
    await pacer.close()


async def test_clear_drops_what_is_queued() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    pacer.start()
    for _ in range(50):
        pacer.push(b"\xff" * 160)
    await asyncio.sleep(0.1)
    dropped = pacer.clear()
    sent = len(sink.frames)
    assert 40 <= dropped <= 49 and pacer.queued == 0
    await asyncio.sleep(0.1)
    assert len(sink.frames) <= sent + 1
    assert pacer.clear() == 0
    await pacer.close()


async def test_stale_generations_are_dropped() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    for _ in range(5):
        pacer.push(b"\x01" * 160)
    pacer.push_mark("old")
    gen = pacer.new_generation()
    for _ in range(3):
        pacer.push(b"\x02" * 160, generation=gen)
    assert pacer.drop_stale() == 5
    pacer.start()
    while pacer.busy:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.03)
    await pacer.close()
    assert [f.payload[:1] for f in sink.frames] == [b"\x02"] * 3


async def test_many_pacers_share_one_tick_and_the_ticker_stops_when_idle() -> None:
    sinks = [Sink() for _ in range(50)]
    pacers = [Pacer(sink) for sink in sinks]
    for pacer in pacers:
        pacer.start()
        for _ in range(10):
            pacer.push(b"\xff" * 160)
    tick = ticker()
    await asyncio.sleep(0)  # each idle pacer sends its first frame at once, then joins the shared tick
    assert [len(sink.times) for sink in sinks] == [1] * 50 and len(tick.active) == 50
    while any(p.busy for p in pacers):
        await asyncio.sleep(0.02)
    for n in range(10):  # the n-th frame of every call went out in the same loop iteration
        times = [sink.times[n] for sink in sinks]
        assert max(times) - min(times) < 0.01
    for sink in sinks:
        gaps = [b - a for a, b in zip(sink.times, sink.times[1:], strict=False)]
        assert min(gaps) > 0.005 and sink.times[-1] - sink.times[0] >= 0.15
    await asyncio.sleep(0.05)
    assert not tick.active and tick._task is not None and tick._task.done()  # no wakeups while idle
    for pacer in pacers:
        await pacer.close()


async def test_a_stalled_loop_is_counted_late_and_not_caught_up_with_a_burst() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    dues: list[float] = []  # the grid instant each frame was sent for (set just before the send)

    async def send(frame: Frame) -> None:
        dues.append(pacer._last_due)
        await sink(frame)

    pacer._send = send
    pacer.start()
    for _ in range(20):
        pacer.push(b"\xff" * 160)
    while len(sink.times) < 3:
        await asyncio.sleep(0.005)
    time.sleep(0.15)  # the event loop is blocked for 7 frames
    while pacer.busy:
        await asyncio.sleep(0.02)
    await pacer.close()
    assert len(sink.times) == 20 and pacer.stats.late >= 1
    # One frame a tick, even right after the stall: by the clock's own grid, not by when a loaded box
    # woke the loop (a late wake-up followed by an on-time one is a short gap in wall time).
    steps = [b - a for a, b in zip(dues, dues[1:], strict=False)]
    assert min(steps) >= MIN_GAP_S, steps


async def test_a_send_that_raises_stops_only_that_pacer() -> None:
    good = Sink()

    async def bad(frame: Frame) -> None:
        raise ValueError("boom")

    pacers = [Pacer(bad), Pacer(good)]
    for pacer in pacers:
        pacer.start()
        for _ in range(5):
            pacer.push(b"\xff" * 160)
    await asyncio.sleep(0.2)
    assert pacers[0].closed and len(good.frames) == 5
    for pacer in pacers:
        await pacer.close()


async def test_queued_counts_audio_frames_through_every_operation() -> None:
    sink = Sink()
    pacer = Pacer(sink)
    pacer.push(b"\x00" * 160, generation=0)
    pacer.push_mark("m")
    pacer.extend([Frame(b"\x01" * 160), Frame(None, 0, "shared"), Frame(b"\x02" * 160)])
    assert pacer.queued == 3
    pacer.new_generation()
    pacer.push(b"\x03" * 160)
    assert pacer.drop_stale() == 3 and pacer.queued == 1
    pacer.push(b"\x04" * 160)
    pacer.start()
    while pacer.busy:
        await asyncio.sleep(0.02)
    assert pacer.queued == 0 and pacer.stats.frames_sent == 2
    pacer.push(b"\x05" * 160, generation=0)  # stale when it reaches the ticker
    pacer.push(b"\x06" * 160)
    while pacer.busy:
        await asyncio.sleep(0.02)
    assert pacer.queued == 0 and pacer.stats.frames_sent == 3
    pacer.push(b"\x07" * 160)
    assert pacer.clear() == 1 and pacer.queued == 0
    await pacer.close()


async def test_frames_sent_late_in_their_tick_do_not_make_the_next_tick_skip(monkeypatch) -> None:
    """200 calls in one tick: the last pacer's frame goes out ~18 ms after its due time. The next
    tick is 20 ms after that due time, so it sends, whatever the previous send's lateness."""
    from runtime.pipeline import pacer as pacing

    sink = Sink()
    pacer = Pacer(sink)
    for _ in range(5):
        pacer.push(b"\xff" * 160)
    for n in range(5):
        due = 100 + n * 0.02
        monkeypatch.setattr(pacing, "_monotonic", lambda due=due: due + 0.018)
        await pacer._tick(due)
    assert len(sink.frames) == 5
