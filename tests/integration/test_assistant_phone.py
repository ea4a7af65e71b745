"""The assistant on a phone call, end to end: a simulated Twilio caller asks, the assistant answers, and what
the caller heard is transcribed back; a barge-in closes the LLM's stream and the next request's history holds
only what was heard."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from callbridge.bots.assistant.brain import INTERRUPTED
from callbridge.bots.assistant.stt import LocalWhisper
from callbridge.codec import resample
from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForQuiet, WaitForReply
from tests.assistant_fixtures import ChatReply, FakeOpenAI
from tests.speech import speech

RATE = 8000


@pytest.fixture(scope="module")
def whisper() -> LocalWhisper:
    return LocalWhisper()


async def heard_words(whisper: LocalWhisper, audio: np.ndarray) -> str:
    return (await whisper.transcribe(resample(audio, RATE, 16000), 16000)).lower()


async def test_the_offline_receptionist_answers_a_question_on_the_phone(server_factory, whisper):
    server = server_factory(bot="assistant")
    caller = SimulatedCaller(server.url, [WaitForQuiet(quiet=0.8, timeout=20),
                                          Speak(speech("What time do you open tomorrow morning?", RATE)),
                                          WaitForReply("heard", timeout=30)])
    report = await caller.run()
    assert report.close_code == 1000
    latencies = report.turn_latencies()
    assert latencies, f"no answer to the question: {report.events}"
    # What the caller heard: the greeting, then the opening hours from the shipped dialog file (words the
    # greeting does not hold).
    words = await heard_words(whisper, report.heard_audio)
    assert "harbor" in words or "dental" in words, words
    assert sum(word in words for word in ("monday", "friday", "evening", "saturday", "sunday", "afternoon")) >= 3, words


async def test_a_barge_in_closes_the_llm_stream_and_the_history_keeps_what_was_heard(server_factory, whisper):
    fake = FakeOpenAI()
    base_url = await fake.start()
    try:
        # 20 sentences streamed over ~10 s; each takes espeak-ng ~3-4 s to say: the caller barges in during the
        # second, while the LLM is still writing.
        sentences = [f"This is sentence number {n} of a long answer about our opening hours." for n in range(1, 21)]
        fake.chat_replies.append(ChatReply(deltas=[s + " " for s in sentences], interval=0.5))
        fake.chat_replies.append(ChatReply(deltas=["Sure."]))
        server = server_factory(bot="assistant", llm_base_url=base_url, llm_model="test-model", llm_api_key="k1")
        question = speech("Tell me everything about your opening hours.", RATE)
        interruption = speech("Stop, wait a moment please.", RATE)
        caller = SimulatedCaller(server.url, [
            Pause(0.3), Speak(question), WaitForReply("start", timeout=20), Pause(5.5), Speak(interruption),
            WaitForReply("heard", timeout=20)])
        report = await caller.run()
        await asyncio.wait_for(fake.stream_ended.wait(), 10)
        first = fake.streams[0]
        assert first.disconnected and first.sent < first.total, "the LLM's stream was closed, not read to its end"
        assert report.clears, "the caller's speech cleared the reply"
        chats = fake.chats()
        assert len(chats) == 2, [c.body for c in chats]
        assert chats[0].headers["Authorization"] == "Bearer k1"
        history = chats[1].body["messages"]
        said = [m for m in history if m["role"] == "assistant"]
        assert said and INTERRUPTED in said[-1]["content"], history
        assert "sentence number 1 " in said[-1]["content"], "the first sentence was heard"
        assert "sentence number 20" not in said[-1]["content"], "the unheard end of the answer is not in the history"
        assert history[-1]["role"] == "user"
    finally:
        await fake.stop()




async def test_an_idle_caller_is_asked_if_still_there_speech_resets_the_count_then_the_call_ends(
    server_factory, whisper
):
    server = server_factory(bot="assistant", idle_seconds=2, idle_prompts=2)
    caller = SimulatedCaller(server.url, [
        WaitForQuiet(quiet=0.8, timeout=20),  # the greeting, heard to its end
        # 2 s after it was heard, "Are you still there?" (1.3 s); the caller answers between that and the next.
        Pause(3.5),
        Speak(speech("Yes, thank you.", RATE)),  # the caller is back: the count starts again
        WaitForReply("heard", timeout=20),
        Pause(40),  # re-prompts 1 and 2, then the goodbye and the hang-up, well before this ends
    ])
    report = await caller.run()
    said = f"call {caller.stream_sid}: "
    lines = [re.sub(r"turn of [\d.]+ s", "turn", line.split(said, 1)[1]) for line in server.logs().splitlines()
             if said in line and ("idle" in line or "turn of" in line)]
    assert lines == ["idle caller re-prompted (1 of 2)", "turn (pause)", "idle caller re-prompted (1 of 2)",
                     "idle caller re-prompted (2 of 2)", "hanging up an idle caller after 2 re-prompts"], lines
    assert not report.clears, report.timeline()
    hangup_at, hangup = next((t, detail) for t, kind, detail in report.events if kind == "hangup")
    assert hangup.startswith("the server closed the socket"), report.timeline()
    last_heard = max(t for t, kind, _ in report.events if kind == "mark_echo")
    assert report.reply_heard[-1] > 2.0 and last_heard <= hangup_at, "the goodbye was heard, then the hang-up"
    words = await heard_words(whisper, report.heard_audio)
    assert words.count("still there") >= 2 and "goodbye" in words, words
