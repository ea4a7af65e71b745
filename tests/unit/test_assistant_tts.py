"""Text-to-speech engines: real espeak-ng (and Piper where the extra is installed), and OpenAI's speech
endpoint as a local server speaks it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest

from callbridge.bots.assistant.openai_api import OpenAISpeech
from callbridge.bots.assistant.stage import StageError
from callbridge.bots.assistant.tts import EspeakTTS, PiperTTS, piper_available
from callbridge.bots.base import Audio
from tests.assistant_fixtures import FakeOpenAI, speech_pcm

SENTENCE = "We're open Monday to Friday from eight in the morning to six in the evening."


def espeak_children() -> list[int]:
    """espeak-ng processes this test process started that are still alive."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(os.getpid()) and fields.get("Name", "").strip() == "espeak-ng":
            children.append(int(entry.name))
    return children


async def collect(chunks: AsyncIterator[Audio]) -> list[Audio]:
    return [chunk async for chunk in chunks]


async def test_espeak_streams_speech_at_its_own_rate() -> None:
    started = time.perf_counter()
    chunks = await collect(EspeakTTS().synthesize(SENTENCE))
    assert {chunk.sample_rate for chunk in chunks} == {22050}
    assert all(chunk.samples.dtype == np.int16 for chunk in chunks)
    assert len(chunks) > 10  # ~100 ms pieces, not one block
    assert all(len(chunk.samples) <= 2205 for chunk in chunks)
    audio = np.concatenate([chunk.samples for chunk in chunks])
    seconds = len(audio) / 22050
    assert 2.5 < seconds < 7.0, seconds  # 13 words at 170 words per minute
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 500  # speech, not silence
    assert time.perf_counter() - started < 2.0


async def test_espeak_voice_and_speed_settings_change_the_speech() -> None:
    slow = np.concatenate([c.samples for c in await collect(EspeakTTS(words_per_minute=120).synthesize(SENTENCE))])
    fast = np.concatenate([c.samples for c in await collect(EspeakTTS(words_per_minute=260).synthesize(SENTENCE))])
    assert len(slow) > 1.6 * len(fast)
    other = np.concatenate([c.samples for c in await collect(EspeakTTS(voice="en+f3").synthesize(SENTENCE))])
    assert not np.array_equal(other[: len(fast)], fast[: len(other)])


async def test_espeak_is_killed_when_the_listener_stops_early() -> None:
    text = " ".join([SENTENCE] * 20)  # ~80 s of speech
    async with aclosing(EspeakTTS().synthesize(text)) as chunks:
        first = await anext(chunks)
        assert len(first.samples) > 0
        assert espeak_children(), "espeak-ng should still be speaking"
    for _ in range(50):
        if not espeak_children():
            break
        await asyncio.sleep(0.01)
    assert espeak_children() == []


async def test_espeak_missing_is_a_stage_error_that_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StageError, match="espeak-ng is not installed") as caught:
        await collect(EspeakTTS().synthesize(SENTENCE))
    assert caught.value.stage == "tts"


@pytest.mark.skipif(not piper_available(), reason="the piper extra is not installed")
async def test_piper_speaks_with_the_shipped_voice() -> None:
    tts = PiperTTS()
    tts.load()
    chunks = await collect(tts.synthesize(SENTENCE))
    assert {chunk.sample_rate for chunk in chunks} == {22050}
    audio = np.concatenate([chunk.samples for chunk in chunks])
    assert 2.0 < len(audio) / 22050 < 8.0
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300


async def test_openai_speech_streams_pcm_at_24k(server: FakeOpenAI) -> None:
    tts = OpenAISpeech(server.base_url, "tts-1", "alloy", api_key="sk-speech")
    chunks = await collect(tts.synthesize("Hello there, caller."))
    await tts.aclose()
    assert {chunk.sample_rate for chunk in chunks} == {24000}
    assert len(chunks) > 1
    assert np.array_equal(np.concatenate([chunk.samples for chunk in chunks]), speech_pcm("Hello there, caller."))
    request = server.received[-1]
    assert request.path == "/v1/audio/speech"
    assert request.body == {"model": "tts-1", "voice": "alloy", "input": "Hello there, caller.",
                            "response_format": "pcm"}
    assert request.headers["Authorization"] == "Bearer sk-speech"


@pytest.mark.parametrize(("status", "said"), [(401, "HTTP 401: Incorrect API key"), (429, "HTTP 429: Rate limit")])
async def test_openai_speech_errors_name_status_and_message(server: FakeOpenAI, status: int, said: str) -> None:
    server.speech_statuses.append(status)
    tts = OpenAISpeech(server.base_url, "tts-1", "alloy")
    with pytest.raises(StageError, match=said) as caught:
        await collect(tts.synthesize("Hello."))
    await tts.aclose()
    assert caught.value.stage == "tts" and server.base_url in caught.value.provider


async def test_openai_speech_unreachable() -> None:
    tts = OpenAISpeech("http://127.0.0.1:9/v1", "tts-1", "alloy", timeout=2)
    with pytest.raises(StageError, match="cannot connect"):
        await collect(tts.synthesize("Hello."))
    await tts.aclose()
