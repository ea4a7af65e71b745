"""STOP_WORDS: matching words in a transcript, the Whisper spotter on espeak-ng speech, and a Call gated by it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from callbridge.bots.assistant.stage import StageError
from callbridge.bots.assistant.stop_words import StopWords, WhisperStopWords
from callbridge.bots.base import CallInfo
from callbridge.bots.echo import EchoBot
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, PlaybackMark
from callbridge.core.turns import TurnConfig
from callbridge.sessions.registry import MemoryRegistry
from callbridge.settings import Settings, SettingsError, load_settings
from tests.speech import silence, speech

WITH_STOP_WORD = "computer, what time is it"
WITHOUT = "what time is it"


@pytest.mark.parametrize(("text", "found"), [
    ("Computer, what time is it?", "computer"),
    ("What time is it? COMPUTER.", "computer"),
    ("Tell me, computer... what time it is", "computer"),
    ("Is the computer's clock right?", "computer"),
    ("A commuter train is late.", None),
    ("Can you compute the total?", None),
    ("I was computing the total.", None),
    ("Microcomputer prices", None),
    ("Computers are useful.", None),
    ("", None),
])
def test_a_stop_word_is_found_as_a_whole_word_whatever_the_case_and_punctuation(text, found):
    assert StopWords(["computer"]).find(text) == found


def test_phrases_match_as_consecutive_words_and_the_configured_spelling_is_reported():
    words = StopWords(["Hey Assistant", "computer"])
    assert words.find("Hey, assistant! What time is it?") == "Hey Assistant"
    assert words.find("hey-assistant, open the door") == "Hey Assistant"
    assert words.find("Hey there, my assistant is late") is None
    assert words.find("okay computer") == "computer"


def test_no_usable_stop_word_is_refused():
    with pytest.raises(ValueError, match="no stop word"):
        StopWords([" ", "?!"])


def test_the_setting_is_a_comma_separated_list_empty_by_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings().stop_words == []
    monkeypatch.setenv("STOP_WORDS", " computer, hey assistant ,")
    assert load_settings().stop_words == ["computer", "hey assistant"]
    monkeypatch.setenv("STOP_WORDS", "computer,?!")
    with pytest.raises(SettingsError, match="STOP_WORDS"):
        load_settings()


@pytest.fixture(scope="module")
def spotter() -> WhisperStopWords:
    spotter = WhisperStopWords(["computer"], timeout=30)
    spotter.load()
    return spotter


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(("text", "found"), [
    (WITH_STOP_WORD, "computer"),
    ("hey computer, open the door", "computer"),
    (WITHOUT, None),
    ("can you compute the total", None),
])
async def test_the_spotter_hears_the_stop_word_in_espeak_speech(spotter, rate, text, found):
    assert await spotter.admits(speech(text, rate), rate) == found


async def test_a_spotter_past_its_timeout_raises(spotter):
    hurried = WhisperStopWords(["computer"], timeout=1e-6)
    with pytest.raises(StageError, match="no transcript within"):
        await hurried.admits(speech(WITH_STOP_WORD, 8000), 8000)


RATE = 8000
FRAME = 160


async def call_through(gate: WhisperStopWords, vad, audio: np.ndarray, done) -> list:
    """Push `audio` into an echo Call gated by `gate` and collect its outbox until `done(items)` holds."""
    registry = MemoryRegistry(10)
    call = Call(registry.open_here("c1", "test"), EchoBot(CallInfo("c1", "test")), vad, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE), turn_gate=gate)
    call.start()
    for start in range(0, len(audio), FRAME):
        call.push_audio(audio[start : start + FRAME])
    items: list = []
    try:
        async with asyncio.timeout(60):
            while not done(items):
                items.append(await call.next_outbound())
    finally:
        await call.close()
    return items


def client_messages(items: list, kind: str) -> list:
    return [item.data for item in items if isinstance(item, ClientMessage) and item.type == kind]


async def test_a_call_answers_only_the_turn_with_the_stop_word_and_hands_the_bot_the_whole_turn(spotter, batcher):
    ignored, addressed = speech(WITHOUT, RATE), speech(WITH_STOP_WORD, RATE)
    audio = np.concatenate([silence(0.4, RATE), ignored, silence(1.5, RATE), addressed, silence(1.5, RATE)])
    items = await call_through(spotter, batcher, audio, lambda items: any(isinstance(i, PlaybackMark) for i in items))
    assert client_messages(items, "log").count("pause_detected") == 2
    assert client_messages(items, "stopword") == ["computer"]
    reply = sum(len(item.samples) for item in items if isinstance(item, AudioOut))
    # The echo is the second turn only, stop word included (pre-roll + speech), not the first.
    assert abs(reply - (len(addressed) + 0.2 * RATE)) < 0.15 * RATE


async def test_a_failing_spotter_costs_the_turn_with_a_warning_not_the_call(batcher):
    hurried = WhisperStopWords(["computer"], timeout=1e-6)
    audio = np.concatenate([silence(0.4, RATE), speech(WITH_STOP_WORD, RATE), silence(1.5, RATE)])
    items = await call_through(hurried, batcher, audio, lambda items: bool(client_messages(items, "warning")))
    assert "stop-word check failed" in client_messages(items, "warning")[0]
    assert not client_messages(items, "stopword")
    assert not any(isinstance(item, AudioOut) for item in items)
