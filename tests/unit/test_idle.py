"""Idle callers (IDLE_SECONDS, IDLE_PROMPTS): counted in the caller's audio, re-prompted by the bot, then hung up
after the bot's idle goodbye has been heard. Real Silero VAD on silence and espeak speech, no sockets."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from callbridge.bots.base import Audio, Bot, CallInfo, Turn
from callbridge.bots.echo import EchoBot
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, Hangup, PlaybackMark
from callbridge.core.turns import TurnConfig
from callbridge.sessions.registry import MemoryRegistry
from tests.speech import silence, speech
from tests.unit.call_outbox import settle, take_all

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
IDLE_SECONDS = 0.5
PROMPT_SAMPLES = 800
GOODBYE_SAMPLES = 1600


class Prompter(Bot):
    """Re-prompts with a short tone, says a longer one as its idle goodbye, and answers turns with nothing."""

    input_rate = RATE

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.prompts: list[int] = []
        self.goodbyes = 0

    async def reply(self, turn: Turn):
        return
        yield

    async def on_idle(self, prompts: int):
        self.prompts.append(prompts)
        yield Audio(np.full(PROMPT_SAMPLES, 500, np.int16), RATE)

    async def idle_goodbye(self):
        self.goodbyes += 1
        yield Audio(np.full(GOODBYE_SAMPLES, 500, np.int16), RATE)


async def started_call(bot_factory, vad, idle_prompts: int, idle_seconds: float = IDLE_SECONDS) -> Call:
    session = MemoryRegistry(10).open_here("c1", "test")
    call = Call(session, bot_factory(CallInfo(call_id="c1", transport="test")), vad, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE), idle_seconds=idle_seconds,
                idle_prompts=idle_prompts)
    call.start()
    await settle(call)  # the greeting job has run (these bots say nothing)
    return call


async def push(call: Call, audio: np.ndarray) -> list:
    """Send `audio` as 20 ms frames, as the phone does; what the call put out meanwhile."""
    for start in range(0, len(audio), FRAME):
        call.push_audio(audio[start : start + FRAME])
    await settle(call)
    return take_all(call)


def played(items: list) -> int:
    return sum(len(item.samples) for item in items if isinstance(item, AudioOut))


def hear(call: Call, items: list) -> None:
    """The transport reports every playback mark in `items` played, as Twilio's mark echoes do."""
    for item in items:
        if isinstance(item, PlaybackMark):
            call.playback_finished(item.name)


async def test_an_idle_caller_is_reprompted_then_hung_up_once_the_goodbye_is_heard(batcher, caplog):
    caplog.set_level(logging.INFO, "callbridge.call")
    call = await started_call(Prompter, batcher, idle_prompts=2)
    assert await push(call, silence(0.4, RATE)) == [], "less than IDLE_SECONDS of silence"
    items = await push(call, silence(0.2, RATE))
    assert call.bot.prompts == [0] and played(items) == PROMPT_SAMPLES
    # While the re-prompt has not been heard the bot counts as talking: no idle time passes.
    assert await push(call, silence(2.0, RATE)) == [] and call.bot.prompts == [0]
    hear(call, items)
    items = await push(call, silence(0.6, RATE))
    assert call.bot.prompts == [0, 1] and played(items) == PROMPT_SAMPLES
    hear(call, items)
    items = await push(call, silence(0.6, RATE))
    assert call.bot.prompts == [0, 1] and call.bot.goodbyes == 1 and played(items) == GOODBYE_SAMPLES
    assert not any(isinstance(item, Hangup) for item in items), "the goodbye is heard before the hang-up"
    hear(call, items)
    assert any(isinstance(item, Hangup) for item in take_all(call))
    events = [record.event for record in caplog.records if getattr(record, "event", "").startswith("idle")]
    assert events == ["idle_reprompt", "idle_reprompt", "idle_hangup"]
    await call.close()


async def test_caller_speech_resets_the_reprompt_count(batcher):
    call = await started_call(Prompter, batcher, idle_prompts=1)
    hear(call, await push(call, silence(0.6, RATE)))
    assert call.bot.prompts == [0]
    # The next idle period would end the call (IDLE_PROMPTS=1); the caller speaks instead.
    items = await push(call, np.concatenate([speech("Yes, I am still here.", RATE), silence(0.2, RATE)]))
    assert played(items) == 0, "no prompt while the caller speaks"
    hear(call, await push(call, silence(1.2, RATE)))
    assert call.bot.prompts == [0, 0] and call.bot.goodbyes == 0


@pytest.mark.parametrize("idle_seconds", [IDLE_SECONDS, 0.0])
async def test_a_bot_silent_when_idle_never_hangs_up_nor_does_a_call_with_idle_seconds_0(batcher, caplog,
                                                                                       idle_seconds):
    """The echo bot says nothing when asked to re-prompt: no re-prompt counts, so the call stays open."""
    caplog.set_level(logging.INFO, "callbridge.call")
    call = await started_call(EchoBot, batcher, idle_prompts=1, idle_seconds=idle_seconds)
    assert await push(call, silence(3.0, RATE)) == []
    assert not [record for record in caplog.records if getattr(record, "event", "").startswith("idle")]
    await call.close()


async def test_idle_prompts_0_ends_the_call_at_the_first_idle_period(batcher):
    call = await started_call(Prompter, batcher, idle_prompts=0)
    items = await push(call, silence(0.6, RATE))
    assert call.bot.prompts == [] and call.bot.goodbyes == 1
    hear(call, items)
    assert any(isinstance(item, Hangup) for item in take_all(call))
    await call.close()
