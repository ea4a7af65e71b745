"""The Silero VAD wrappers: per-call state, and batching across calls that changes no result."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import uvloop

from callbridge.core.vad import BIG_BATCH, INLINE_WINDOWS, WINDOW_SAMPLES, VadBatcher, VadModel, model_file
from tests.speech import speech


def windows(audio: np.ndarray, rate: int) -> list[np.ndarray]:
    size = WINDOW_SAMPLES[rate]
    return [audio[i : i + size] for i in range(0, len(audio) - size + 1, size)]


async def alone(model: VadModel, rate: int, audio: list[np.ndarray]) -> list[float]:
    """The probabilities of one stream by itself, through the batcher production runs."""
    batcher = VadBatcher(model, in_thread=False, max_wait=0.0)
    got: list[float] = []
    stream = batcher.stream(rate, lambda w, p: got.append(p))
    for window in audio:
        stream.submit(window)
    await batcher.idle()
    await batcher.close()
    return got


def test_models_come_from_the_installed_wheel():
    assert model_file("silero_vad.onnx").stat().st_size > 100_000
    assert model_file("silero_vad.jit").stat().st_size > 100_000


async def test_speech_scores_high_and_silence_low(onnx_vad):
    probabilities = await alone(onnx_vad, 8000, windows(speech("Good morning everybody.", 8000), 8000))
    assert max(probabilities) > 0.9
    assert max(await alone(onnx_vad, 8000, [np.zeros(256, np.int16)] * 20)) < 0.1


@pytest.mark.parametrize("backend", ["onnx_vad", "torch_vad"])
async def test_batched_streams_match_each_stream_alone(backend, request):
    model = request.getfixturevalue(backend)
    sources = [
        (8000, speech("Hello there, this is the first caller.", 8000)),
        (8000, speech("A second caller says something else entirely.", 8000)),
        (16000, speech("And a wideband browser caller joins in.", 16000)),
    ]
    each_alone = [await alone(model, rate, windows(audio, rate)) for rate, audio in sources]

    batcher = VadBatcher(model)
    results: list[list[float]] = [[] for _ in sources]
    streams = [batcher.stream(rate, lambda w, p, i=i: results[i].append(p)) for i, (rate, _) in enumerate(sources)]
    per_source = [windows(audio, rate) for rate, audio in sources]
    # Several windows per stream are queued before the batcher runs: their order and state must hold.
    for step in range(0, max(len(w) for w in per_source), 3):
        for stream, source_windows in zip(streams, per_source, strict=True):
            for window in source_windows[step : step + 3]:
                stream.submit(window)
        await batcher.idle()
    await batcher.close()
    for got, expected in zip(results, each_alone, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert batcher.windows == sum(len(w) for w in per_source)
    assert batcher.batches < batcher.windows, "windows of different calls share inferences"


async def test_a_failing_result_handler_does_not_stop_other_streams(onnx_vad):
    batcher = VadBatcher(onnx_vad)
    good: list[float] = []

    def broken(window, p):
        raise RuntimeError("handler bug")

    bad_stream = batcher.stream(8000, broken)
    good_stream = batcher.stream(8000, lambda w, p: good.append(p))
    for _ in range(5):
        bad_stream.submit(np.zeros(256, np.int16))
        good_stream.submit(np.zeros(256, np.int16))
    await batcher.idle()
    await batcher.close()
    assert len(good) == 5


async def test_a_closed_stream_gets_no_more_results(onnx_vad):
    batcher = VadBatcher(onnx_vad)
    got: list[float] = []
    stream = batcher.stream(8000, lambda w, p: got.append(p))
    for _ in range(4):
        stream.submit(np.zeros(256, np.int16))
    stream.close()
    stream.submit(np.zeros(256, np.int16))
    await batcher.idle()
    await batcher.close()
    assert got == []


async def test_a_batch_waits_for_every_open_stream_but_no_longer_than_max_wait(onnx_vad):
    """Under load a batch holds one window of every call (fewer inferences, each costing far more than its
    windows); a call that sends nothing holds the others up by max_wait at most, a closed one not at all."""
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=0.5)
    loop = asyncio.get_running_loop()
    answered: dict[str, float] = {}
    first = batcher.stream(8000, lambda w, p: answered.setdefault("first", loop.time()))
    second = batcher.stream(8000, lambda w, p: answered.setdefault("second", loop.time()))
    window = np.zeros(256, np.int16)

    first.submit(window)
    await asyncio.sleep(0.1)
    assert answered == {}, "the first call's window waits for the second's"
    second.submit(window)
    await batcher.idle()
    assert (batcher.batches, batcher.windows) == (1, 2)

    answered.clear()
    sent = loop.time()
    first.submit(window)  # the second call sends nothing now
    await batcher.idle()
    assert 0.45 <= answered["first"] - sent < 2.0
    assert (batcher.batches, batcher.windows) == (2, 3)

    answered.clear()
    sent = loop.time()
    first.submit(window)
    await asyncio.sleep(0.05)
    second.close()  # nobody left to wait for
    await batcher.idle()
    assert answered["first"] - sent < 0.3
    await batcher.close()


async def test_a_big_batch_goes_without_waiting_for_every_stream(onnx_vad):
    """With many calls a batch is cheap per window already: it goes once BIG_BATCH windows wait."""
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=10.0)
    answered: list[int] = []
    streams = [batcher.stream(8000, lambda w, p, i=i: answered.append(i)) for i in range(BIG_BATCH + 1)]
    window = np.zeros(256, np.int16)
    for stream in streams[: BIG_BATCH - 1]:
        stream.submit(window)
    await asyncio.sleep(0.1)
    assert answered == [], "fewer wait for the others"
    streams[BIG_BATCH - 1].submit(window)
    await asyncio.wait_for(batcher.idle(), 1.0)
    assert sorted(answered) == list(range(BIG_BATCH)) and batcher.batches == 1
    for stream in streams:
        stream.close()
    await batcher.close()


def test_on_uvloop_a_batch_due_at_once_is_rescheduled_without_a_timer(onnx_vad):
    """uvloop (the service's loop) turns a `call_at` already due into a plain handle, with no `when()`."""
    async def calls_behind() -> list[int]:
        batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=0.0)  # every deadline is due at once
        answered: list[int] = []
        streams = [batcher.stream(8000, lambda w, p, i=i: answered.append(i)) for i in range(BIG_BATCH + 1)]
        for stream in streams[:BIG_BATCH]:
            stream.submit(np.zeros(256, np.int16))
            stream.submit(np.zeros(256, np.int16))
        await asyncio.wait_for(batcher.idle(), 5.0)
        await batcher.close()
        return answered

    assert sorted(uvloop.run(calls_behind())) == sorted(2 * list(range(BIG_BATCH)))


async def test_a_lone_stream_never_waits(onnx_vad):
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=10.0)
    got: list[float] = []
    stream = batcher.stream(8000, lambda w, p: got.append(p))
    for _ in range(3):
        stream.submit(np.zeros(256, np.int16))
    await asyncio.wait_for(batcher.idle(), 1.0)
    await batcher.close()
    assert len(got) == 3


async def test_rows_grow_and_are_reused_without_leaking_state(onnx_vad):
    """Streams keep their state in rows of shared arrays: rows added while others are mid-speech, and a row
    freed by a call that hung up mid-speech, start clean; no stream's results change."""
    rate = 8000
    said = [speech(text, rate) for text in ("One two three four five.", "Six seven eight nine ten.")]
    each_alone = [await alone(onnx_vad, rate, windows(audio, rate)) for audio in said]

    batcher = VadBatcher(onnx_vad)
    results: dict[str, list[float]] = {}

    def open_stream(name: str):
        results[name] = []
        return batcher.stream(rate, lambda w, p: results[name].append(p))

    first = [open_stream(f"first{i}") for i in range(10)]
    source = windows(said[0], rate)
    for window in source[:10]:  # mid-speech when the next streams join and the arrays grow
        for stream in first:
            stream.submit(window)
    await batcher.idle()
    late = [open_stream(f"late{i}") for i in range(10)]  # 20 streams: more than the first 16 rows
    first[0].close()  # hangs up mid-speech: its row goes back
    reused = open_stream("reused")
    assert reused.row == first[0].row
    for window in source[10:]:
        for stream in first[1:]:
            stream.submit(window)
    for window in windows(said[1], rate):
        for stream in [*late, reused]:
            stream.submit(window)
    await batcher.idle()
    await batcher.close()
    for i in range(1, 10):
        np.testing.assert_allclose(results[f"first{i}"], each_alone[0], atol=1e-4)
    for name in [*(f"late{i}" for i in range(10)), "reused"]:
        np.testing.assert_allclose(results[name], each_alone[1], atol=1e-4)


async def test_on_the_event_loop_batches_give_the_same_results_and_let_the_loop_run_between(onnx_vad):
    """Inference on the event loop (VAD_THREAD=loop): same probabilities as a stream alone, no thread, and a
    backlog (here: no wait between batches at all) still lets other callbacks run between batches."""
    rate = 8000
    audio = windows(speech("Counting one two three on the event loop.", rate), rate)[:12]
    expected = await alone(onnx_vad, rate, audio)
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=0.0)
    got: list[list[float]] = [[], []]
    streams = [batcher.stream(rate, lambda w, p, i=i: got[i].append(p)) for i in range(2)]
    threads_before = threading.active_count()
    for window in audio:  # 12 windows per stream: 12 batches
        for stream in streams:
            stream.submit(window)
    seen: list[int] = []

    async def watch() -> None:
        while len(got[0]) < len(audio):
            seen.append(len(got[0]))
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(batcher.idle(), watch()), 10.0)
    await batcher.close()
    for results in got:
        np.testing.assert_allclose(results, expected, atol=1e-4)
    assert batcher.batches == len(audio)
    assert threading.active_count() == threads_before, "no inference thread"
    assert len({n for n in seen if 0 < n < len(audio)}) >= len(audio) // 2, "the loop ran between batches"


class ThreadRecorder:
    """The real model, noting which thread ran each batch and how many windows it held."""

    def __init__(self, model: VadModel) -> None:
        self.model = model
        self.batches: list[tuple[int, str]] = []

    def infer_rows(self, x: np.ndarray, state: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append((len(x), threading.current_thread().name))
        return self.model.infer_rows(x, state, rate)


async def test_with_a_thread_small_batches_still_run_on_the_loop(onnx_vad):
    recorder = ThreadRecorder(onnx_vad)
    batcher = VadBatcher(recorder, max_wait=0.0)
    window = np.zeros(256, np.int16)
    for calls in (INLINE_WINDOWS, INLINE_WINDOWS + 1):
        streams = [batcher.stream(8000, lambda w, p: None) for _ in range(calls)]
        for stream in streams:
            stream.submit(window)
        await batcher.idle()
        for stream in streams:
            stream.close()
    await batcher.close()
    loop_thread = threading.current_thread().name
    assert recorder.batches[0] == (INLINE_WINDOWS, loop_thread)
    size, thread = recorder.batches[1]
    assert size == INLINE_WINDOWS + 1 and thread != loop_thread and thread.startswith("vad")
