"""AssistantBot end to end: offline (local Whisper, the shipped dialog file, espeak-ng) and with OpenAI-style
providers on a local server (barge-in, failures, timings)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import numpy as np
import pytest
import yaml

from callbridge.bots.assistant import AssistantConfig, AssistantFactory, Stages, assistant_factory
from callbridge.bots.assistant.bot import APOLOGY, IDLE_GOODBYE, IDLE_PROMPT, OVER_REPLY_PROMPT, AssistantBot
from callbridge.bots.assistant.brain import INTERRUPTED
from callbridge.bots.assistant.script import SHIPPED_SCRIPT, ScriptBrain
from callbridge.bots.assistant.stt import LocalWhisper
from callbridge.bots.assistant.tts import EspeakTTS
from callbridge.bots.base import AdditionalOutputs, Audio, BotOutput, CallInfo, EndCall, Mark, Turn
from tests.assistant_fixtures import ChatReply, FakeOpenAI, Providers, phone_speech, words
from tests.speech import silence

ANSWERS = {intent["name"]: " ".join(intent["answer"].split())
           for intent in yaml.safe_load(SHIPPED_SCRIPT.read_text())["intents"]}
SYSTEM = "You are the Harbor Dental assistant."
CALL = CallInfo(call_id="call-1", transport="test")
Online = Callable[..., AssistantFactory]


@pytest.fixture(scope="module")
def whisper() -> LocalWhisper:
    stt = LocalWhisper()
    stt.load()
    return stt


@pytest.fixture(scope="module")
def offline(whisper: LocalWhisper) -> Stages:
    return Stages(whisper, ScriptBrain.from_file(), EspeakTTS())


@pytest.fixture
async def online(server: FakeOpenAI) -> AsyncIterator[Online]:
    """Factories wired from settings as the service reads them: every provider on the local server."""
    providers = Providers()

    def make(**settings: str) -> AssistantFactory:
        return providers.add(assistant_factory(AssistantConfig.from_env({
            "STT_BASE_URL": server.base_url, "LLM_BASE_URL": server.base_url, "LLM_MODEL": "test-model",
            "LLM_API_KEY": "sk-test", "SYSTEM_PROMPT": SYSTEM, **settings,
        })))

    yield make
    await providers.aclose()


async def collect(outputs: AsyncIterator[BotOutput]) -> list[BotOutput]:
    return [item async for item in outputs]


def said(outputs: list[BotOutput], role: str) -> list[str]:
    return [item.args[0]["text"] for item in outputs
            if isinstance(item, AdditionalOutputs) and item.args[0]["role"] == role]


def audio_of(outputs: list[BotOutput]) -> Audio:
    chunks = [item for item in outputs if isinstance(item, Audio)]
    assert chunks, "no audio"
    assert len({chunk.sample_rate for chunk in chunks}) == 1
    return Audio(np.concatenate([chunk.samples for chunk in chunks]), chunks[0].sample_rate)


def marks(outputs: list[BotOutput]) -> list[str]:
    return [item.name for item in outputs if isinstance(item, Mark)]


def hear_all(bot: AssistantBot, outputs: list[BotOutput]) -> None:
    for name in marks(outputs):
        bot.on_heard(name)


async def test_offline_turn_answers_the_question_aloud(offline: Stages, whisper: LocalWhisper) -> None:
    bot = AssistantBot(CALL, offline)
    greeting = await collect(bot.greet())
    assert said(greeting, "assistant")[0].startswith("Thank you for calling Harbor Dental.")
    hear_all(bot, greeting)

    outputs = await collect(bot.reply(Turn(phone_speech("What time do you open tomorrow?"), 16000)))
    assert {"open", "tomorrow"} <= set(words(said(outputs, "user")[0]))
    assert " ".join(said(outputs, "assistant")) == ANSWERS["hours"]
    # Each sentence: its transcript, its audio, then its mark.
    kinds = [type(item).__name__ for item in outputs if not isinstance(item, Audio)]
    # The user's words, then per sentence its words and its mark; the turn's Timings right after its first audio.
    sentences = len(said(outputs, "assistant"))
    assert kinds == ["AdditionalOutputs", "AdditionalOutputs", "Timings", "Mark"] + ["AdditionalOutputs", "Mark"] * (
        sentences - 1)
    first = len(marks(greeting)) + 1  # mark names run on through the call
    assert marks(outputs) == [f"s{n}" for n in range(first, first + len(said(outputs, "assistant")))]

    spoken = audio_of(outputs)
    assert spoken.sample_rate == 22050
    heard = set(words(await whisper.transcribe(spoken.samples, spoken.sample_rate)))
    assert len(heard & {"monday", "friday", "saturday", "sundays", "morning", "evening", "closed"}) >= 4, heard

    hear_all(bot, outputs)
    assert bot.history[-2:] == [{"role": "user", "content": said(outputs, "user")[0]},
                                {"role": "assistant", "content": ANSWERS["hours"]}]
    timings = bot.last_timings
    assert timings is not None and timings.stt_seconds is not None and timings.stt_seconds > 0
    assert timings.llm_first_token_seconds is not None and timings.tts_first_audio_seconds is not None
    assert timings.first_audio_seconds is not None and timings.first_audio_seconds >= timings.stt_seconds


async def test_goodbye_is_said_then_the_call_ends(offline: Stages) -> None:
    outputs = await collect(AssistantBot(CALL, offline).reply(Turn(phone_speech("Goodbye, thank you."), 16000)))
    assert " ".join(said(outputs, "assistant")) == ANSWERS["goodbye"]
    assert isinstance(outputs[-1], EndCall) and isinstance(outputs[-2], Mark)


async def test_keypad_goes_to_the_brain(offline: Stages) -> None:
    bot = AssistantBot(CALL, offline)
    outputs = await collect(bot.on_dtmf("2"))
    assert said(outputs, "user") == ["(pressed 2)"]
    assert " ".join(said(outputs, "assistant")) == ANSWERS["address"]
    assert bot.history[0] == {"role": "user", "content": "(pressed 2)"}
    outputs = await collect(bot.on_dtmf("#"))
    assert isinstance(outputs[-1], EndCall)


async def test_silence_gets_no_answer(offline: Stages) -> None:
    bot = AssistantBot(CALL, offline)
    assert await collect(bot.reply(Turn(silence(1.0, 16000), 16000))) == []
    assert bot.history == []


async def test_unheard_sentences_stay_out_of_the_history(offline: Stages) -> None:
    bot = AssistantBot(CALL, offline)
    outputs = await collect(bot.on_dtmf("1"))
    assert bot.history == [{"role": "user", "content": "(pressed 1)"}]  # nothing heard yet
    bot.on_heard(marks(outputs)[0])
    assert bot.history[-1] == {"role": "assistant", "content": said(outputs, "assistant")[0]}
    bot.on_interrupted()
    assert bot.history[-1] == {"role": "assistant", "content": f"{said(outputs, 'assistant')[0]} {INTERRUPTED}"}


async def test_barge_in_keeps_only_what_was_heard_and_closes_the_llm_stream(server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    server.transcripts.append("Tell me everything about your practice.")
    server.chat_replies.append(ChatReply([f"Sentence number {n}. " for n in range(1, 41)], interval=0.05))
    outputs: list[BotOutput] = []
    async with aclosing(bot.reply(Turn(phone_speech("Tell me everything."), 16000))) as reply:
        async for item in reply:
            outputs.append(item)
            if isinstance(item, Mark):
                break
        bot.on_heard(item.name)  # the caller heard the first sentence, then spoke over the second
        bot.on_interrupted()
    stopped = asyncio.get_running_loop().time()
    await asyncio.wait_for(server.stream_ended.wait(), 2.0)
    (stream,) = server.streams
    assert stream.disconnected and stream.sent < stream.total // 2
    assert said(outputs, "assistant") == ["Sentence number 1."]
    assert audio_of(outputs).samples.size > 0

    server.transcripts.append("What about Saturday?")
    server.chat_replies.append(ChatReply(["We open at 9 on Saturday."]))
    outputs = await collect(bot.reply(Turn(phone_speech("What about Saturday?"), 16000)))
    assert said(outputs, "assistant") == ["We open at 9 on Saturday."]
    assert server.chats()[-1].body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Tell me everything about your practice."},
        {"role": "assistant", "content": f"Sentence number 1. {INTERRUPTED}"},
        {"role": "user", "content": "What about Saturday?"},
    ]
    assert asyncio.get_running_loop().time() - stopped < 5


async def test_llm_tool_call_ends_the_call_after_its_goodbye(server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    server.transcripts.append("That's all, bye.")
    server.chat_replies.append(ChatReply(["Goodbye, and thanks for calling!"], tool_calls=[("end_call", "{}")]))
    outputs = await collect(bot.reply(Turn(phone_speech("That's all, bye."), 16000)))
    assert said(outputs, "assistant") == ["Goodbye, and thanks for calling!"]
    assert isinstance(outputs[-1], EndCall)
    assert server.chats()[-1].body["tools"][0]["function"]["name"] == "end_call"


@pytest.mark.parametrize(("stage", "fault", "said_in_log"), [
    ("llm", ChatReply(status=401), "HTTP 401: Incorrect API key provided."),
    ("llm", ChatReply(status=429), "HTTP 429: Rate limit reached for requests."),
    ("llm", ChatReply(status=500), "HTTP 500"),
    ("llm", ChatReply(["Too late."], delay=3.0), "nothing within 0.5 s"),
    ("stt", 401, "HTTP 401: Incorrect API key provided."),
    ("tts", 500, "HTTP 500"),
])
async def test_a_failing_provider_costs_one_apology_and_one_log_line(
    server: FakeOpenAI, online: Online, caplog: pytest.LogCaptureFixture, stage: str, fault: object,
    said_in_log: str,
) -> None:
    factory = online(LLM_TIMEOUT_SECONDS="0.5", TTS_BASE_URL=server.base_url)
    await factory.prepare()  # the apology, synthesised locally before any call
    bot = factory(CALL)
    server.transcripts.append(401 if stage == "stt" else "What time do you open?")
    if stage == "llm":
        server.chat_replies.append(fault)  # type: ignore[arg-type]
    if stage == "tts":
        server.speech_statuses.append(500)
    with caplog.at_level(logging.INFO, logger="callbridge.assistant"):
        outputs = await collect(bot.reply(Turn(phone_speech("What time do you open?"), 16000)))
    assert said(outputs, "assistant") == [APOLOGY]
    assert audio_of(outputs).sample_rate == 22050  # espeak-ng, even when the speech provider is the one failing
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING
                and record.name.startswith("callbridge")]
    assert len(warnings) == 1
    assert warnings[0].name == "callbridge.assistant"
    assert f"assistant {stage} stage failed" in warnings[0].getMessage()
    assert said_in_log in warnings[0].getMessage() and server.base_url in warnings[0].getMessage()
    assert warnings[0].call_id == "call-1" and warnings[0].stage == stage  # type: ignore[attr-defined]

    # The call goes on: the next turn is answered.
    server.transcripts.append("Hello?")
    server.chat_replies.append(ChatReply(["Hello again."]))
    outputs = await collect(bot.reply(Turn(phone_speech("Hello?"), 16000)))
    assert said(outputs, "assistant") == ["Hello again."]
    assert audio_of(outputs).sample_rate == 24000  # the speech provider's PCM


async def test_each_turn_logs_its_timings(server: FakeOpenAI, caplog: pytest.LogCaptureFixture, online: Online) -> None:
    bot = online()(CALL)
    server.transcripts.append("Hi.")
    server.chat_replies.append(ChatReply(["Hello.", " How can I help?"], interval=0.05))
    with caplog.at_level(logging.INFO, logger="callbridge.assistant"):
        await collect(bot.reply(Turn(phone_speech("Hi."), 16000)))
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "assistant_turn"]
    assert record.call_id == "call-1"  # type: ignore[attr-defined]
    timings = bot.last_timings
    assert timings is not None
    assert record.llm_first_token_seconds == round(timings.llm_first_token_seconds or -1, 3)  # type: ignore[attr-defined]
    assert 0 < (timings.stt_seconds or 0) < (timings.first_audio_seconds or 0) < 2
    assert 0 < (timings.tts_first_audio_seconds or 0) < 1


async def test_factory_shares_the_stages_between_calls(offline: Stages) -> None:
    factory = assistant_factory(AssistantConfig())
    one, two = factory(CALL), factory(CallInfo("call-2", "test"))
    assert one.stages is two.stages
    assert isinstance(one.stages.stt, LocalWhisper) and isinstance(one.stages.brain, ScriptBrain)
    assert isinstance(one.stages.tts, EspeakTTS)
    assert one.stages.greeting.startswith("Thank you for calling Harbor Dental.")


async def test_a_turn_reports_its_stage_timings_once_its_first_audio_is_out(offline: Stages) -> None:
    """The runtime records Timings in callbridge_stage_seconds; the assistant yields them right after the
    turn's first audio, with the stages that ran."""
    from callbridge.bots.base import Timings

    bot = AssistantBot(CallInfo("c1", "twilio"), offline)
    outputs = await collect(bot.reply(Turn(phone_speech("What time do you open?"), 16000)))
    timings = [item for item in outputs if isinstance(item, Timings)]
    assert len(timings) == 1
    assert set(timings[0].stages) == {"stt", "llm_first_token", "tts_first_audio"}
    assert all(0 <= seconds < 10 for seconds in timings[0].stages.values())
    first_audio = next(i for i, item in enumerate(outputs) if isinstance(item, Audio))
    assert outputs.index(timings[0]) == first_audio + 1


@pytest.mark.parametrize(("text", "voice", "backchannel"), [
    ("Uh-huh.", "en-us", True), ("Okay.", "en-us", True), ("Yeah.", "en-us", True), ("I see.", "en-us", True),
    ("Right.", "en-us", True), ("No.", "en-us", False), ("Wait.", "en-us", False), ("Stop.", "en-us", False),
    ("What?", "en-us", False),
    # Heard without OVER_REPLY_PROMPT as "And then the..." and "So what?" (bench/results/backchannel.md).
    ("Mm-hmm.", "en-gb", True), ("Sure.", "en-gb", True),
    ("Stop.", "en-gb", False), ("What?", "en-gb", False), ("Hold on.", "en-gb", False), ("Wait.", "en-gb", False),
])
async def test_a_short_turn_over_the_reply_is_a_backchannel_by_its_words(offline: Stages, text: str, voice: str,
                                                                         backchannel: bool) -> None:
    bot = AssistantBot(CALL, offline)
    turn = np.concatenate([np.zeros(16000 // 5, np.int16), phone_speech(text, voice)])  # the turn's preroll
    assert await bot.is_backchannel(Turn(audio=turn, sample_rate=16000)) is backchannel


async def test_a_noise_without_words_is_a_backchannel(offline: Stages) -> None:
    noise = (np.random.default_rng(7).standard_normal(16000 * 2 // 5) * 300).astype(np.int16)
    assert await AssistantBot(CALL, offline).is_backchannel(Turn(audio=noise, sample_rate=16000))


def test_backchannel_words_and_whisper_notes_are_backchannels_and_other_words_not() -> None:
    from callbridge.bots.assistant.bot import is_backchannel_text

    for text in ("", "Uh-huh.", "Mm-hmm, okay.", "Yeah, yeah, got it.", "All right.", "[BLANK_AUDIO]", "(coughing)",
                 "And Mm-hmm."):  # Whisper's made-up "and" before a hum
        assert is_backchannel_text(text), text
    for text in ("No.", "Wait, stop.", "Okay, but what time?", "Sorry, I meant Thursday.", "you", "And then the...",
                 "Okay and then?", "Yeah, and?"):
        assert not is_backchannel_text(text), text


async def test_an_idle_caller_is_asked_from_the_dialog_file_and_the_question_joins_the_history(
    offline: Stages, whisper: LocalWhisper
) -> None:
    script = yaml.safe_load(SHIPPED_SCRIPT.read_text())
    bot = AssistantBot(CALL, offline)
    outputs = await collect(bot.on_idle(0))
    assert said(outputs, "assistant") == [script["idle_prompt"]] == ["Are you still there?"]
    spoken = audio_of(outputs)
    heard = " ".join(words(await whisper.transcribe(spoken.samples, spoken.sample_rate)))
    assert "still there" in heard, heard
    assert bot.history == [], "not heard yet"
    hear_all(bot, outputs)
    assert bot.history == [{"role": "assistant", "content": "Are you still there?"}]

    goodbye = await collect(bot.idle_goodbye())
    assert " ".join(said(goodbye, "assistant")) == script["idle_goodbye"]
    assert not any(isinstance(item, EndCall) for item in goodbye), "the runtime ends the call after it"


async def test_with_an_llm_the_idle_question_is_a_fixed_line_the_llm_then_sees(server: FakeOpenAI,
                                                                              online: Online) -> None:
    bot = online()(CALL)
    outputs = await collect(bot.on_idle(1))
    assert said(outputs, "assistant") == [IDLE_PROMPT]
    assert server.chats() == [], "an idle caller gives the LLM nothing to answer"
    hear_all(bot, outputs)
    server.transcripts.append("Yes, sorry, I'm here.")
    server.chat_replies.append(ChatReply(["Great, how can I help?"]))
    await collect(bot.reply(Turn(phone_speech("Yes, sorry, I'm here."), 16000)))
    assert server.chats()[-1].body["messages"][1:] == [
        {"role": "assistant", "content": IDLE_PROMPT},
        {"role": "user", "content": "Yes, sorry, I'm here."},
    ]
    assert " ".join(said(await collect(bot.idle_goodbye()), "assistant")) == IDLE_GOODBYE


def transcriptions(server: FakeOpenAI) -> list[bytes]:
    return [r.body["file"] for r in server.received if r.path == "/v1/audio/transcriptions"]


async def received_transcriptions(server: FakeOpenAI, count: int) -> None:
    for _ in range(200):
        if len(transcriptions(server)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(transcriptions(server))} transcription requests, not {count}")


async def test_a_turn_ending_at_its_pause_is_answered_from_the_transcription_begun_there(
        server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    question = phone_speech("What time do you open?")
    server.transcripts.extend(["What time do you open?", "a second transcription"])
    bot.on_pause(Turn(question, 16000))
    await received_transcriptions(server, 1)  # under way before the turn ends
    outputs = await collect(bot.reply(Turn(question.copy(), 16000)))  # equal samples: the same turn
    assert said(outputs, "user") == ["What time do you open?"]
    assert len(transcriptions(server)) == 1


async def test_speech_after_the_pause_gets_the_whole_turn_transcribed(server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    start, whole = phone_speech("If it is not too late"), phone_speech("If it is not too late, I will come in.")
    server.transcripts.extend(["If it is not too late", "If it is not too late, I will come in."])
    bot.on_pause(Turn(start, 16000))
    await received_transcriptions(server, 1)
    outputs = await collect(bot.reply(Turn(whole, 16000)))  # the caller spoke on: a longer turn
    assert said(outputs, "user") == ["If it is not too late, I will come in."]
    sent = transcriptions(server)
    assert len(sent) == 2 and len(sent[1]) > len(sent[0])  # the guess is not used: the whole turn is transcribed


async def test_an_interruption_judged_by_its_words_is_answered_without_transcribing_it_again(
        server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    wait = phone_speech("Wait, when do you close?")
    server.transcripts.extend(["Wait, when do you close?", "a second transcription"])
    assert not await bot.is_backchannel(Turn(wait, 16000))
    outputs = await collect(bot.reply(Turn(wait, 16000)))
    assert said(outputs, "user") == ["Wait, when do you close?"]
    assert len(transcriptions(server)) == 1
    prompts = [r.body["prompt"] for r in server.received if r.path == "/v1/audio/transcriptions"]
    assert prompts == [OVER_REPLY_PROMPT]  # a short turn over the reply is decoded knowing what such turns are


async def test_a_turn_not_over_a_reply_is_transcribed_without_the_over_reply_prompt(
        server: FakeOpenAI, online: Online) -> None:
    bot = online()(CALL)
    server.transcripts.extend(["What time do you open?"])
    await collect(bot.reply(Turn(phone_speech("What time do you open?"), 16000)))
    assert [r.body["prompt"] for r in server.received if r.path == "/v1/audio/transcriptions"] == [None]
