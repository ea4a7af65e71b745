"""What a bot author trips over, made loud or harmless: any sample rate, marks that say what was heard,
inputs only when declared and deliverable, wrong yields and float scaling logged once with the call's id."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from callbridge.bots.base import Audio, Bot, CallInfo, Mark
from callbridge.bots.function import FunctionBot, declares_inputs
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, PlaybackMark
from callbridge.core.session import Session
from callbridge.core.turns import TurnConfig
from callbridge.core.vad import VadBatcher
from tests.speech import silence, speech

RATE = 8000


@pytest.fixture
async def batcher(onnx_vad):
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=0.0)
    yield batcher
    await batcher.close()


def make_call(bot: Bot, vad: VadBatcher, *, transport: str = "websocket", **kw) -> Call:
    return Call(Session(id="c1", transport=transport), bot, vad, inbound_rate=RATE, outbound_rate=RATE,
                turn_config=TurnConfig(sample_rate=RATE), **kw)


async def greeting_of(call: Call) -> list:
    call.start()
    for _ in range(100):
        await asyncio.sleep(0.005)
    items = []
    while (item := call.outbox.get_nowait()) is not None:
        items.append(item)
    return items


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class Greeter(Bot):
    def __init__(self, call: CallInfo, *outputs: object) -> None:
        super().__init__(call)
        self.outputs = outputs
        self.heard: list[str] = []
        self.interrupted = 0

    async def greet(self):
        for output in self.outputs:
            yield output

    def on_heard(self, name: str) -> None:
        self.heard.append(name)

    def on_interrupted(self) -> None:
        self.interrupted += 1


@pytest.mark.parametrize("rate", [22050, 44100, 11025, 32000])
async def test_bot_audio_at_tts_rates_is_played_at_the_call_rate(batcher, rate):
    bot = Greeter(CallInfo("c1", "websocket"), Audio(tone(rate, 1.0), rate))
    items = await greeting_of(make_call(bot, batcher))
    played = np.concatenate([i.samples for i in items if isinstance(i, AudioOut)]).astype(np.float32) / 32768
    assert abs(len(played) - RATE) <= 160, "one second of audio stays one second"
    spectrum = np.abs(np.fft.rfft(played[400:-400]))
    assert abs(np.argmax(spectrum) * RATE / len(played[400:-400]) - 440) < 5, "the tone keeps its pitch"
    assert 0.3 < np.max(np.abs(played)) < 0.6, "and its level"


async def test_marks_report_what_was_heard_and_stop_at_a_barge_in(batcher):
    bot = Greeter(CallInfo("c1", "websocket"), Audio(tone(RATE, 0.3), RATE), Mark("first"),
                  Audio(tone(RATE, 0.3), RATE), Mark("second"))
    call = make_call(bot, batcher)
    items = await greeting_of(call)
    marks = [i for i in items if isinstance(i, PlaybackMark)]
    assert len(marks) == 3, "one per Mark, then the reply's end"
    before_first = items[: items.index(marks[0])]
    assert sum(len(i.samples) for i in before_first if isinstance(i, AudioOut)) >= 0.3 * RATE
    call.playback_finished(marks[0].name)
    assert bot.heard == ["first"]
    call.interrupt()
    call.playback_finished(marks[1].name)  # Twilio echoes pending marks on clear: not heard
    assert bot.heard == ["first"] and bot.interrupted == 1
    await call.close()


def test_only_a_declared_parameter_asks_for_inputs():
    def with_star(audio, *inputs):
        yield audio

    def with_label(audio, label):
        yield audio

    assert not declares_inputs(with_star)
    assert declares_inputs(with_label)


async def test_on_the_phone_a_bot_wanting_inputs_never_waits(batcher):
    got: list = []

    def labeller(audio, label="none"):
        got.append(label)
        yield audio

    bot = FunctionBot(CallInfo("c1", "twilio"), labeller, input_rate=8000)
    assert bot.wants_inputs
    call = make_call(bot, batcher, transport="twilio", input_timeout=5.0, inputs_possible=False)
    call.start()
    audio = np.concatenate([silence(0.3, RATE), speech("Hello there, this is a test.", RATE), silence(1.0, RATE)])
    loop = asyncio.get_running_loop()
    began = loop.time()
    for start in range(0, len(audio), 160):
        call.push_audio(audio[start : start + 160])
    await batcher.idle()
    while not got and loop.time() - began < 3.0:
        await asyncio.sleep(0.01)
    assert got, "the turn was answered"
    assert loop.time() - began < 2.0, "without waiting INPUT_TIMEOUT_SECONDS (5 s) for a set_input"
    messages = []
    while (item := call.outbox.get_nowait()) is not None:
        messages.append(item)
    assert not [m for m in messages if isinstance(m, ClientMessage) and m.type == "send_input"]
    await call.close()


async def test_a_bytes_yielding_bot_is_logged_once_with_the_call_id(batcher, caplog):
    bot = Greeter(CallInfo("c1", "twilio"), b"\x00\x01" * 80, b"\x00\x01" * 80)
    with caplog.at_level(logging.WARNING, logger="callbridge.call"):
        await greeting_of(make_call(bot, batcher, transport="twilio"))
    lines = [r.getMessage() for r in caplog.records if "bytes" in r.getMessage()]
    assert len(lines) == 1 and "call c1" in lines[0] and "Audio(samples, rate)" in lines[0]


async def test_a_raising_bot_is_logged_at_warning_with_the_call_id(batcher, caplog):
    class Broken(Bot):
        async def greet(self):
            raise RuntimeError("speech engine missing")
            yield

    with caplog.at_level(logging.WARNING, logger="callbridge.call"):
        await greeting_of(make_call(Broken(CallInfo("c1", "twilio")), batcher, transport="twilio"))
    (record,) = [r for r in caplog.records if "speech engine missing" in r.getMessage()]
    assert record.levelno == logging.WARNING and "call c1" in record.getMessage() and record.exc_info


async def test_float_audio_in_int16_range_is_scaled_with_one_warning(batcher, caplog):
    loud = tone(RATE, 0.5) * 32767  # a bot that forgot to scale to ±1
    bot = Greeter(CallInfo("c1", "websocket"), Audio(loud, RATE), Audio(loud, RATE))
    with caplog.at_level(logging.WARNING, logger="callbridge.call"):
        items = await greeting_of(make_call(bot, batcher))
    played = np.concatenate([i.samples for i in items if isinstance(i, AudioOut)])
    assert 14000 < np.max(np.abs(played)) < 18000, "half scale, as meant, not clipped noise"
    assert len([r for r in caplog.records if "beyond ±1" in r.getMessage()]) == 1


async def test_a_bots_stage_timings_reach_the_metrics_and_the_clients(batcher):
    from callbridge.bots.base import Timings
    from callbridge.metrics import Metrics

    metrics = Metrics()
    bot = Greeter(CallInfo("c1", "websocket"), Timings({"stt": 0.3, "tts_first_audio": 0.02}))
    call = make_call(bot, batcher, observer=metrics)
    items = await greeting_of(call)
    assert ClientMessage("log", {"timings": {"stt": 0.3, "tts_first_audio": 0.02}}) in items
    rendered = metrics.render().decode()
    assert 'callbridge_stage_seconds_count{stage="stt"} 1.0' in rendered
    assert 'callbridge_stage_seconds_sum{stage="tts_first_audio"} 0.02' in rendered
