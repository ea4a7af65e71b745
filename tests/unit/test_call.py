"""The call runtime driven with espeak speech and the real Silero model, no sockets."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from callbridge.bots.base import AdditionalOutputs, Audio, Bot, CallInfo, EndCall, Turn
from callbridge.bots.echo import EchoBot
from callbridge.bots.function import FunctionBot
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, Hangup, PlaybackMark
from callbridge.core.turns import TurnConfig
from callbridge.sessions.registry import MemoryRegistry
from tests.speech import silence, speech
from tests.unit.call_outbox import settle, take_all

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
HELLO = "Hello there, how are you today?"
AGAIN = "Tell me more about the weather."


def make_call(bot_factory=EchoBot, *, barge_in: bool = True, vad, registry=None, call_id="c1", **kw) -> Call:
    registry = registry or MemoryRegistry(10)
    session = registry.open_here(call_id, "test")
    bot = bot_factory(CallInfo(call_id=call_id, transport="test"))
    return Call(session, bot, vad, inbound_rate=RATE, outbound_rate=RATE,
                turn_config=TurnConfig(sample_rate=RATE, **kw), barge_in=barge_in)


def logs(items: list) -> list[str]:
    return [i.data for i in items if isinstance(i, ClientMessage) and i.type == "log"]


def audio_of(items: list) -> np.ndarray:
    frames = [i.samples for i in items if isinstance(i, AudioOut)]
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


async def push(call: Call, audio: np.ndarray) -> None:
    for start in range(0, len(audio), FRAME):
        call.push_audio(audio[start : start + FRAME])
    await settle(call)


async def test_echo_reply_is_the_turn_and_playback_is_tracked(batcher):
    call = make_call(vad=batcher)
    call.start()
    said = speech(HELLO, RATE)
    await push(call, np.concatenate([silence(0.4, RATE), said, silence(1.0, RATE)]))
    items = take_all(call)
    assert logs(items) == ["started_talking", "pause_detected", "response_starting"]
    reply = audio_of(items)
    assert all(len(i.samples) == FRAME for i in items if isinstance(i, AudioOut))
    # The echo is the turn (pre-roll + speech), as long as the turn to within the resampler's delay.
    assert abs(len(reply) - (len(said) + 0.2 * RATE)) < 0.1 * RATE
    assert correlation(reply, said) > 0.9
    ends = [i for i in items if isinstance(i, PlaybackMark)]
    assert len(ends) == 1 and isinstance(items[-1], PlaybackMark)
    assert call.bot_talking
    call.playback_finished(ends[0].name)
    assert logs(take_all(call)) == ["playback_finished"]
    assert not call.bot_talking
    await call.close()


class SlowTalker(Bot):
    """Talks for a long time in small pieces and records when it was closed."""

    input_rate = 8000

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.closed = threading.Event()
        self.turns: list[Turn] = []

    async def reply(self, turn: Turn):
        self.turns.append(turn)
        try:
            # ~3 s: longer than the VAD takes to catch up with a test's audio pushed all at once (one window
            # per stream per batch).
            for _ in range(300):
                yield Audio(np.full(800, 1000, np.int16), 8000)
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()


async def test_barge_in_cancels_reply_within_one_window_of_speech_start(batcher):
    call = make_call(SlowTalker, vad=batcher)
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    assert "response_starting" in logs(take_all(call))
    assert call.bot_talking
    # The caller talks over the bot (espeak audio starts at its first sample): feed 32 ms windows one
    # at a time and note when speech start is declared and when the flush appears.
    interruption = np.concatenate([speech(AGAIN, RATE), silence(1.0, RATE)])
    window = call.detector.config.window_samples
    threshold = 192 * RATE // 1000
    started_at = flushed_at = None
    for start in range(0, len(interruption), window):
        call.push_audio(interruption[start : start + window])
        await call._vad.batcher.idle()
        items = take_all(call)
        if started_at is None and "started_talking" in logs(items):
            started_at = start + window
        flushes = [n for n, item in enumerate(items) if isinstance(item, Flush)]
        if flushes:
            flushed_at = start + window
            assert not any(isinstance(item, AudioOut) for item in items[flushes[0] :])
            break
    assert flushed_at is not None, "barge-in never flushed"
    assert flushed_at == started_at, "the flush comes in the window that declares speech"
    # Silero needs a window or two to rise on a plosive onset, and the call's windows need not align with
    # this feed; the exact run-length rule itself is pinned down in test_turns.
    assert threshold <= flushed_at <= threshold + 4 * window
    await settle()
    assert call.bot.closed.is_set(), "the bot's generator must be closed at barge-in"
    assert call._reply is not None and call._reply.done()
    assert call.stats.barge_ins == 1
    # The rest of the interruption becomes the next turn, whose reply starts from its pre-roll.
    await push(call, interruption[flushed_at:])
    assert len(call.bot.turns) == 2
    await call.close()


async def test_without_barge_in_speech_during_reply_is_the_next_turn(batcher):
    call = make_call(SlowTalker, barge_in=False, vad=batcher)
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE), speech(AGAIN, RATE),
                                     silence(1.0, RATE)]))
    items = take_all(call)
    assert not any(isinstance(i, Flush) for i in items)
    assert len(call.bot.turns) == 1, "the second turn waits until the first reply is done"
    for _ in range(500):
        await asyncio.sleep(0.01)
        if len(call.bot.turns) == 2:
            break
    assert len(call.bot.turns) == 2
    await call.close()


def correlation(reply: np.ndarray, said: np.ndarray) -> float:
    """Peak normalised cross-correlation of the reply against the spoken audio."""
    a = reply.astype(np.float64)
    b = said.astype(np.float64)
    corr = np.correlate(a, b, mode="valid") if len(a) >= len(b) else np.correlate(b, a, mode="valid")
    return float(np.max(np.abs(corr)) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


async def test_set_input_reaches_the_next_turn_and_outputs_stream_in_order(batcher):
    seen: list[tuple] = []

    def handler(audio, threshold):
        seen.append((audio[0], threshold))
        yield AdditionalOutputs({"threshold": threshold}, "done")

    registry = MemoryRegistry(10)
    call = make_call(lambda info: FunctionBot(info, handler, input_rate=8000), vad=batcher, registry=registry)
    call.start()
    stream = await registry.output_stream("c1")
    await registry.set_input("c1", 0.25)
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    await registry.set_input("c1", 0.75)
    await push(call, np.concatenate([speech(AGAIN, RATE), silence(0.8, RATE)]))
    assert [threshold for _, threshold in seen] == [0.25, 0.75]
    assert seen[0][0] == 8000 and seen[0][1] == 0.25
    assert await registry.fetch_latest_output("c1") == ({"threshold": 0.75}, "done")
    messages = [i for i in take_all(call) if isinstance(i, ClientMessage) and i.type == "fetch_output"]
    assert [m.data for m in messages] == [[{"threshold": 0.25}, "done"], [{"threshold": 0.75}, "done"]]
    await registry.close("c1")
    assert [o async for o in stream] == [({"threshold": 0.25}, "done"), ({"threshold": 0.75}, "done")]
    await call.close()


async def test_send_input_is_asked_when_no_fresh_input(batcher):
    def handler(audio, name):
        yield AdditionalOutputs(name)

    registry = MemoryRegistry(10)
    call = make_call(lambda info: FunctionBot(info, handler, input_rate=8000), vad=batcher, registry=registry)
    call.input_timeout = 2.0
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    assert ClientMessage("send_input") in take_all(call)
    assert await registry.fetch_latest_output("c1") is None, "the turn waits for the input it asked for"
    await registry.set_input("c1", "ada")
    await settle()
    assert await registry.fetch_latest_output("c1") == ("ada",)
    await call.close()


class Flaky(EchoBot):
    input_rate = 8000

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.calls = 0

    async def reply(self, turn: Turn):
        self.calls += 1
        if self.calls == 1:
            yield Audio(turn.audio[:800], turn.sample_rate)
            raise RuntimeError("model fell over")
        async for item in super().reply(turn):
            yield item


async def test_a_raising_bot_sends_error_and_the_next_turn_works(batcher, caplog):
    call = make_call(Flaky, vad=batcher)
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    items = take_all(call)
    errors = [i for i in items if isinstance(i, ClientMessage) and i.type == "error"]
    assert len(errors) == 1 and "model fell over" in errors[0].data
    assert "Traceback" in caplog.text and "model fell over" in caplog.text
    said = speech(AGAIN, RATE)
    await push(call, np.concatenate([said, silence(0.8, RATE)]))
    items = take_all(call)
    assert "response_starting" in logs(items)
    assert correlation(audio_of(items), said) > 0.9
    await call.close()


async def test_sync_generator_bot_runs_off_the_event_loop(batcher):
    threads: list[str] = []

    def handler(audio):
        threads.append(threading.current_thread().name)
        yield (audio[0], audio[1][0, :400])

    call = make_call(lambda info: FunctionBot(info, handler, input_rate=16000), vad=batcher)
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    items: list = []
    for _ in range(100):
        items += take_all(call)
        if any(isinstance(i, PlaybackMark) for i in items):
            break
        await asyncio.sleep(0.01)
    assert threads and threads[0] != threading.main_thread().name
    assert len(audio_of(items)) == FRAME * 2  # 400 samples at 16 kHz = 25 ms -> 200 at 8 kHz, padded
    await call.close()


class Receptionist(Bot):
    input_rate = 8000

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.digits: list[str] = []

    async def greet(self):
        yield Audio(np.full(1600, 500, np.int16), 8000)

    async def on_dtmf(self, digit: str):
        self.digits.append(digit)
        if digit == "#":
            yield Audio(np.full(800, 700, np.int16), 8000)
            yield EndCall()

    async def reply(self, turn: Turn):
        return
        yield


async def test_greeting_dtmf_and_hangup_after_last_words_are_heard(batcher):
    call = make_call(Receptionist, vad=batcher)
    call.start()
    await settle()
    items = take_all(call)
    assert len(audio_of(items)) == 1600 and isinstance(items[-1], PlaybackMark)
    call.playback_finished(items[-1].name)
    for digit in "12#":
        call.push_dtmf(digit)
    await settle()
    assert call.bot.digits == ["1", "2", "#"]
    items = take_all(call)
    assert not any(isinstance(i, Hangup) for i in items), "hang up only once the goodbye was heard"
    end = next(i for i in items if isinstance(i, PlaybackMark))
    call.playback_finished(end.name)
    assert any(isinstance(i, Hangup) for i in take_all(call))
    await call.close()


@pytest.mark.parametrize("barge_in", [True, False])
async def test_close_cancels_a_running_reply(batcher, barge_in):
    call = make_call(SlowTalker, vad=batcher, barge_in=barge_in)
    call.start()
    await push(call, np.concatenate([speech(HELLO, RATE), silence(0.8, RATE)]))
    assert call._reply is not None and not call._reply.done()
    await call.close()
    assert call.bot.closed.is_set()


def test_bot_audio_layouts_become_mono_int16():
    from callbridge.core.call import to_int16

    mono = np.array([1000, -2000, 3000], np.int16)
    np.testing.assert_array_equal(to_int16(mono), mono)
    np.testing.assert_array_equal(to_int16(mono.reshape(1, -1)), mono)  # FastRTC's (1, n)
    stereo = np.stack([mono, mono + 2])
    np.testing.assert_array_equal(to_int16(stereo), mono + 1)  # (2, n) channels first
    np.testing.assert_array_equal(to_int16(stereo.T.copy()), mono + 1)  # (n, 2) interleaved
    np.testing.assert_array_equal(to_int16(np.array([0.5, -1.5, 1.0], np.float32)), [16383, -32767, 32767])


async def test_paced_writer_sends_a_barge_in_flush_at_once_not_after_the_audio_it_waits_to_send(batcher):
    """The writer holds the next audio message until its time (the lead ahead of playback); a barge-in
    meanwhile must go out as the next thing on the wire, not after that held audio."""
    from callbridge.edge.media import FRAMES_PER_MESSAGE, PacedWriter
    from callbridge.transports.browser import BrowserProtocol

    call = make_call(vad=batcher)  # not started: this test alone fills the outbox
    for _ in range(50):  # 1 s of reply audio
        call.outbox.put(AudioOut(np.full(FRAME, 1000, np.int16)))
    call.outbox.put(PlaybackMark("r1"))
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, float]] = []

    class RecordingSocket:
        async def send(self, text: str) -> None:
            message = json.loads(text)
            sent.append((message.get("event") or "message", loop.time()))

    lead = 0.04
    writer = PacedWriter(call, BrowserProtocol(65536), RecordingSocket(), lead,  # type: ignore[arg-type]
                         lambda reply_id, play_end: sent.append(("mark", loop.time())))
    task = asyncio.create_task(writer.run())
    message_seconds = FRAMES_PER_MESSAGE * FRAME / RATE
    # The first message goes at once, the second `lead` before the first has played; then the writer waits.
    await asyncio.sleep(message_seconds - lead + message_seconds / 2)
    assert [kind for kind, _ in sent] == ["media", "media"]
    next_due = writer.play_end - lead
    interrupted = loop.time()
    assert interrupted < next_due  # the writer is holding the third message
    call.interrupt()
    await asyncio.sleep(0.01)
    kinds = [kind for kind, _ in sent]
    assert kinds[:3] == ["media", "media", "clear"], "no held audio before the clear"
    assert kinds[3:] == ["message"]  # the barge_in log message, after the clear
    cleared_at = sent[2][1]
    assert cleared_at < next_due
    assert writer.play_end == pytest.approx(cleared_at, abs=0.005)  # nothing queued at the caller now
    call.outbox.put(Hangup())
    await asyncio.wait_for(task, 1)
    assert [kind for kind, _ in sent] == kinds  # the dropped reply stays dropped
    await call.close()
