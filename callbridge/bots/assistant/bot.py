"""AssistantBot: a spoken assistant made of stages: speech-to-text -> brain -> sentences -> text-to-speech.

Every call shares one `Stages` (models load once per process); each call's bot keeps its conversation.
The history holds only what the caller heard: each spoken sentence is followed by a `Mark`, and a
sentence counts once the runtime reports it heard. After a barge-in, a reply keeps its heard sentences
and ends with `INTERRUPTED`, so the brain knows where it was cut off.

A provider that fails (down, slow, 401, 429...) costs the caller one spoken apology, synthesised at
start-up with a local engine, and the service one warning line; the call goes on.

The OpenAI-compatible providers (openai_api.py) are imported only when a provider URL is configured:
the offline assistant starts without the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from callbridge.bots.assistant.brain import (
    END_CALL,
    INTERRUPTED,
    TRANSFER_CALL,
    Action,
    Brain,
    EndCallAction,
    Tool,
    ToolCall,
    keypress_message,
)
from callbridge.bots.assistant.config import AssistantConfig, AssistantConfigError
from callbridge.bots.assistant.script import SHIPPED_SCRIPT, ScriptBrain, ScriptError
from callbridge.bots.assistant.sentences import SentenceSplitter
from callbridge.bots.assistant.stage import StageError
from callbridge.bots.assistant.stt import LocalWhisper, SpeechToText
from callbridge.bots.assistant.tts import EspeakTTS, PiperTTS, TextToSpeech
from callbridge.bots.base import (
    AdditionalOutputs,
    Audio,
    Bot,
    BotOutput,
    CallInfo,
    EndCall,
    Mark,
    Timings,
    Transfer,
    Turn,
)

logger = logging.getLogger("callbridge.assistant")

APOLOGY = "Sorry, I'm having trouble right now. Please try again in a moment."
DEFAULT_GREETING = "Hello! How can I help you?"
GOODBYE = "Thank you for calling. Goodbye!"
FAREWELL = "Sorry, this line is closing now. Please call again later. Goodbye!"
#: What a listener says over a reply without asking for the floor, as words (a transcript's letters,
#: lower-cased, hyphens and punctuation as spaces). "no", "wait", "stop", "sorry" are not among them.
BACKCHANNEL_PHRASES = ("uh huh", "mm hmm", "mhm", "hmm", "mm", "uh", "um", "ah", "oh", "okay", "ok", "yeah", "yes",
                       "yep", "yup", "right", "all right", "alright", "sure", "got it", "i see", "cool", "great",
                       "exactly", "i know", "makes sense")
#: Whisper tiny.en starts a short turn that opens on a hum or a vowel with a word it did not hear, most often
#: "and" ("And Mm-hmm." for espeak-ng en-gb "Mm-hmm.", "And now please." for "Exactly."): a leading "and" adds
#: nothing a caller asks for, so it does not make a backchannel a turn.
_BACKCHANNEL = re.compile(
    rf"(?:and\b\s*)?(?:(?:{'|'.join(sorted(BACKCHANNEL_PHRASES, key=len, reverse=True))})\b\s*)*")
#: Whisper's prompt for a short turn said over a reply: what such turns are, backchannels and interruptions
#: alike, spelt as Whisper writes them. Without it tiny.en heard espeak-ng's "Mm-hmm." as "And then the..." and
#: "Sure." as "So what?"; naming interruptions too keeps it from hearing every short turn as a backchannel
#: (bench/backchannel.py: its held-out short turns, which the prompt does not name, are scored apart).
OVER_REPLY_PROMPT = "Mm-hmm. Uh-huh. Yeah. Okay. Right. Sure. I see. No. Wait. Stop. What? Hold on. Sorry?"
#: Whisper's notes on sounds that are not words: "[BLANK_AUDIO]", "(coughing)", "*sighs*".
_SOUND_NOTE = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


def is_backchannel_text(transcript: str) -> bool:
    """Whether a short turn's transcript is a backchannel or no words at all (a noise)."""
    words = " ".join(re.sub(r"[^a-z']+", " ", _SOUND_NOTE.sub(" ", transcript.lower())).split())
    return _BACKCHANNEL.fullmatch(words) is not None
IDLE_PROMPT = "Are you still there?"
IDLE_GOODBYE = "I haven't heard anything, so I'll hang up now. Thank you for calling, goodbye!"
TRANSFERRING = "One moment, I'll transfer you now."


class Stages:
    """The stages every call shares, and the apology they fall back on."""

    def __init__(self, stt: SpeechToText, brain: Brain, tts: TextToSpeech, apology_tts: TextToSpeech | None = None,
                 greeting: str = "", transfer_number: str = "") -> None:
        self.stt = stt
        self.brain = brain
        self.tts = tts
        self.transfer_number = transfer_number  # TRANSFER_NUMBER: where transfer_call hands a caller on
        #: A local engine: the apology must play when the configured speech provider is the one failing.
        self.apology_tts = apology_tts or tts
        self.greeting = greeting or brain.greeting or DEFAULT_GREETING
        self.idle_prompt = brain.idle_prompt or IDLE_PROMPT
        self.idle_goodbye = brain.idle_goodbye or IDLE_GOODBYE
        self._apology: list[Audio] | None = None

    @classmethod
    def from_config(cls, config: AssistantConfig) -> Stages:
        """The stages `config` names; the OpenAI SDK is imported only for a provider URL it sets."""
        stt: SpeechToText
        if config.stt_base_url:
            from callbridge.bots.assistant.openai_api import OpenAITranscription

            stt = OpenAITranscription(config.stt_base_url, config.stt_model, config.stt_api_key,
                                      config.stt_timeout_seconds)
        else:
            try:
                stt = LocalWhisper(Path(config.stt_model) if config.stt_model else None, config.stt_timeout_seconds)
            except ValueError as exc:
                raise AssistantConfigError(f"STT_MODEL: {exc}") from exc
        brain: Brain
        if config.llm_base_url:
            from callbridge.bots.assistant.openai_api import OpenAIChat

            brain = OpenAIChat(config.llm_base_url, config.llm_model, config.llm_api_key, config.system_prompt,
                               config.llm_timeout_seconds)
        else:
            try:
                brain = ScriptBrain.from_file(config.assistant_script or SHIPPED_SCRIPT)
            except ScriptError as exc:
                raise AssistantConfigError(f"ASSISTANT_SCRIPT: {exc}") from exc
        espeak = EspeakTTS(config.tts_voice if config.tts_engine == "espeak" else "en-us", config.tts_speed,
                           config.tts_timeout_seconds)
        tts: TextToSpeech = espeak
        if config.tts_engine == "piper":
            try:
                tts = PiperTTS(Path(config.tts_voice) if config.tts_voice else None, config.tts_timeout_seconds)
            except RuntimeError as exc:
                raise AssistantConfigError(f"TTS_ENGINE: {exc}") from exc
        elif config.tts_engine == "openai":
            from callbridge.bots.assistant.openai_api import OpenAISpeech

            tts = OpenAISpeech(config.tts_base_url, config.tts_model, config.tts_voice, config.tts_api_key,
                               config.tts_timeout_seconds)
        return cls(stt, brain, tts, apology_tts=espeak if config.tts_engine == "openai" else tts,
                   greeting=config.greeting, transfer_number=config.transfer_number)

    async def prepare(self) -> None:
        """Load the local models and synthesise the apology now, so the first call waits for neither."""
        for stage in (self.stt, self.tts):
            load = getattr(stage, "load", None)  # local engines only
            if load is not None:
                await asyncio.to_thread(load)
        await self.apology()

    async def aclose(self) -> None:
        """Close what the stages hold open (HTTP connections to providers)."""
        for stage in (self.stt, self.brain, self.tts):
            close = getattr(stage, "aclose", None)  # providers over HTTP only
            if close is not None:
                await close()

    async def apology(self) -> list[Audio]:
        if self._apology is None:
            async with aclosing(self.apology_tts.synthesize(APOLOGY)) as chunks:
                self._apology = [chunk async for chunk in chunks]
        return self._apology


@dataclass
class TurnTimings:
    """Where one turn's time went, in seconds (None: the stage did not run)."""

    stt_seconds: float | None = None
    llm_first_token_seconds: float | None = None
    tts_first_audio_seconds: float | None = None
    #: From the start of the reply (the turn's end) to its first audio.
    first_audio_seconds: float | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)

    def stages(self) -> dict[str, float]:
        """The stages that ran, for the runtime's `callbridge_stage_seconds` histogram."""
        names = {"stt_seconds": "stt", "llm_first_token_seconds": "llm_first_token",
                 "tts_first_audio_seconds": "tts_first_audio"}
        return {stage: round(value, 4) for name, stage in names.items() if (value := getattr(self, name)) is not None}

    def figures(self) -> dict[str, float | None]:
        return {name: None if value is None else round(value, 3)
                for name, value in asdict(self).items() if name != "started"}


@dataclass
class _Sentence:
    text: str
    mark: str
    heard: bool = False


@dataclass
class _Reply:
    """One assistant message as the caller heard it: the sentences reported heard, and whether it was cut."""

    sentences: list[_Sentence] = field(default_factory=list)
    interrupted: bool = False

    def message(self) -> dict[str, str] | None:
        heard = [sentence.text for sentence in self.sentences if sentence.heard]
        if not heard:
            return None
        content = " ".join(heard)
        return {"role": "assistant", "content": f"{content} {INTERRUPTED}" if self.interrupted else content}


class AssistantBot(Bot):
    input_rate = 16000

    def __init__(self, call: CallInfo, stages: Stages) -> None:
        super().__init__(call)
        self.stages = stages
        self.last_timings: TurnTimings | None = None
        self._log: list[dict[str, str] | _Reply] = []
        self._unheard: dict[str, tuple[_Sentence, _Reply]] = {}
        self._mark_numbers = itertools.count(1)
        self._speaking: _Reply | None = None
        # A transcription begun early: the audio, the prompt it was decoded with, the transcript.
        self._early: tuple[np.ndarray, str, asyncio.Future[str]] | None = None

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The tools the brain is offered: end_call, and transfer_call where the call can be transferred and
        TRANSFER_NUMBER says where to."""
        if self.call.can_transfer and self.stages.transfer_number:
            return END_CALL, TRANSFER_CALL
        return (END_CALL,)

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as the brain sees it: caller messages, and assistant messages as heard."""
        messages = []
        for entry in self._log:
            message = entry.message() if isinstance(entry, _Reply) else entry
            if message is not None:
                messages.append(message)
        return messages

    # -- the Bot contract ----------------------------------------------------------------------------

    async def greet(self) -> AsyncIterator[BotOutput]:
        async for item in self._speak(_sentences_of(self.stages.greeting), self._new_reply()):
            yield item

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        timings = self.last_timings = TurnTimings()
        try:
            failure: StageError | None = None
            try:
                text = await self._transcript(turn)
            except StageError as exc:
                failure, text = exc, ""
            timings.stt_seconds = time.perf_counter() - timings.started
            if failure is not None:
                self._report(failure)
                async for item in self._apologise(self._new_reply()):
                    yield item
                return
            if not text:
                return
            yield AdditionalOutputs({"role": "user", "text": text})
            async for item in self._answer({"role": "user", "content": text}, timings):
                yield item
        finally:
            self._log_timings(timings)

    async def on_dtmf(self, digit: str) -> AsyncIterator[BotOutput]:
        timings = self.last_timings = TurnTimings()
        message = keypress_message(digit)
        yield AdditionalOutputs({"role": "user", "text": message["content"]})
        try:
            async for item in self._answer(message, timings):
                yield item
        finally:
            self._log_timings(timings)

    async def farewell(self) -> AsyncIterator[BotOutput]:
        async for item in self._speak(_sentences_of(FAREWELL), self._new_reply()):
            yield item

    async def on_idle(self, prompts: int) -> AsyncIterator[BotOutput]:
        """The same question each time; the history keeps it, so the brain knows what the caller answers."""
        async for item in self._speak(_sentences_of(self.stages.idle_prompt), self._new_reply()):
            yield item

    async def idle_goodbye(self) -> AsyncIterator[BotOutput]:
        async for item in self._speak(_sentences_of(self.stages.idle_goodbye), self._new_reply()):
            yield item

    async def on_transfer_failed(self, to: str, reason: str) -> AsyncIterator[BotOutput]:
        """The caller hears why they are still here; the brain sees it in the history."""
        text = f"Sorry, I can't transfer you: {reason}."
        async for item in self._speak(_sentences_of(text), self._new_reply()):
            yield item

    def on_pause(self, turn: Turn) -> None:
        """Start transcribing at the pause: if the turn ends here, the rest of the pause (PAUSE_MS less
        END_OF_TURN_ASK_MS, or the model's verdict) overlaps speech-to-text instead of preceding it. A guess
        from an earlier pause of the same turn is withdrawn (it leaves the local model's queue if waiting)."""
        self._drop_early()
        prompt = OVER_REPLY_PROMPT if self._reply_out else ""  # a pause in a turn over the reply
        self._early = (turn.audio, prompt, asyncio.ensure_future(
            self.stages.stt.transcribe(turn.audio, turn.sample_rate, prompt=prompt)))

    @property
    def _reply_out(self) -> bool:
        """A reply is being made or played and not all of it was heard: the caller's turn is said over it."""
        return self._speaking is not None or bool(self._unheard)

    async def _transcript(self, turn: Turn, prompt: str = "") -> str:
        """The turn's transcript: the one begun at its pause when the caller said nothing after it, if decoded
        with `prompt` (any early one serves a reply: an interruption's was decoded with `OVER_REPLY_PROMPT`)."""
        early, self._early = self._early, None
        if early is not None and np.array_equal(early[0], turn.audio) and (early[1] == prompt or not prompt):
            return await early[2]
        if early is not None:
            self._early = early
            self._drop_early()
        return await self.stages.stt.transcribe(turn.audio, turn.sample_rate, prompt=prompt)

    def _drop_early(self) -> None:
        if self._early is not None:
            task = self._early[2]
            if not task.cancel() and not task.cancelled():
                task.exception()  # a failed guess nobody waits for is not an error worth a traceback
            self._early = None

    def on_heard(self, name: str) -> None:
        if name in self._unheard:
            sentence, _ = self._unheard.pop(name)
            sentence.heard = True

    async def is_backchannel(self, turn: Turn) -> bool:
        """Its words say so (`is_backchannel_text`), decoded with `OVER_REPLY_PROMPT`. An STT failure takes the
        turn for a real one: it is answered (with the apology) as it would be without the hook. The words come
        from the transcription begun at the pause when there is one, and an interruption's are kept for the
        reply to it."""
        try:
            text = await self._transcript(turn, OVER_REPLY_PROMPT)
        except StageError as exc:
            self._report(exc)
            return False
        backchannel = is_backchannel_text(text)
        if not backchannel:  # the reply that answers this turn reuses its words
            self._early = (turn.audio, OVER_REPLY_PROMPT, asyncio.get_running_loop().create_future())
            self._early[2].set_result(text)
        logger.info("call %s: short turn over the reply, heard as %r: %s", self.call.call_id, text,
                    "a backchannel" if backchannel else "an interruption",
                    extra={"event": "assistant_backchannel", "call_id": self.call.call_id, "backchannel": backchannel})
        return backchannel

    def on_interrupted(self) -> None:
        """Every sentence not heard by now never will be: the replies they belong to were cut off, and so
        is the reply still being made."""
        for _, reply in self._unheard.values():
            reply.interrupted = True
        self._unheard.clear()
        if self._speaking is not None:
            self._speaking.interrupted = True

    # -- a reply, stage by stage -----------------------------------------------------------------------

    def _new_reply(self) -> _Reply:
        reply = _Reply()
        self._log.append(reply)
        return reply

    async def _answer(self, message: dict[str, str], timings: TurnTimings) -> AsyncIterator[BotOutput]:
        self._log.append(message)
        history = self.history
        async for item in self._speak(self._think(history, timings), self._new_reply(), timings):
            yield item

    async def _think(self, history: list[dict[str, str]], timings: TurnTimings) -> AsyncGenerator[str | Action, None]:
        """The brain's reply as whole sentences (and its actions, in order), timing its first token."""
        splitter = SentenceSplitter()
        asked = time.perf_counter()
        async with aclosing(self.stages.brain.respond(history, self.tools)) as stream:
            async for item in stream:
                if timings.llm_first_token_seconds is None:
                    timings.llm_first_token_seconds = time.perf_counter() - asked
                if isinstance(item, str):
                    for sentence in splitter.feed(item):
                        yield sentence
                    continue
                if (rest := splitter.flush()) is not None:
                    yield rest
                yield item
        if (rest := splitter.flush()) is not None:
            yield rest

    async def _speak(self, sentences: AsyncGenerator[str | Action, None], reply: _Reply,
                     timings: TurnTimings | None = None) -> AsyncIterator[BotOutput]:
        """Say each sentence as it comes; a provider failure ends the reply with the apology.

        A reply stopped before its end (barge-in: the runtime closes or cancels it) counts as interrupted.
        """
        end_call = transfer = finished = False
        self._speaking = reply
        try:
            try:
                async with aclosing(sentences):
                    async for item in sentences:
                        if isinstance(item, EndCallAction):
                            end_call = True
                        elif isinstance(item, ToolCall) and item.name == TRANSFER_CALL.name and (
                                TRANSFER_CALL in self.tools):
                            transfer = True
                        elif isinstance(item, ToolCall):
                            logger.warning("call %s: the brain called %s, which this call does not offer",
                                           self.call.call_id, item.name,
                                           extra={"event": "assistant_unknown_tool", "call_id": self.call.call_id})
                        else:
                            async for output in self._say(item, reply, timings):
                                yield output
                if (end_call or transfer) and not reply.sentences:
                    async for output in self._say(TRANSFERRING if transfer else GOODBYE, reply, timings):
                        yield output
            except StageError as exc:
                self._report(exc)
                async for output in self._apologise(reply):
                    yield output
            finished = True
        finally:
            self._speaking = None
            if not finished:
                reply.interrupted = True
        if transfer:  # the call leaves the bot either way: a transfer wins over a hang-up
            yield Transfer(self.stages.transfer_number)
        elif end_call:
            yield EndCall()

    async def _say(self, text: str, reply: _Reply, timings: TurnTimings | None) -> AsyncIterator[BotOutput]:
        """One sentence: its transcript once its first audio exists, the audio, then its mark."""
        sentence: _Sentence | None = None
        asked = time.perf_counter()
        async with aclosing(self.stages.tts.synthesize(text)) as chunks:
            async for chunk in chunks:
                first_of_turn = False
                if sentence is None:
                    if timings is not None and timings.tts_first_audio_seconds is None:
                        timings.tts_first_audio_seconds = time.perf_counter() - asked
                        timings.first_audio_seconds = time.perf_counter() - timings.started
                        first_of_turn = True
                    sentence = self._add_sentence(text, reply)
                    yield AdditionalOutputs({"role": "assistant", "text": text})
                yield chunk
                if first_of_turn and timings is not None:  # the turn's stages are known once its first audio is
                    yield Timings(timings.stages())
        if sentence is not None:
            yield Mark(sentence.mark)

    async def _apologise(self, reply: _Reply) -> AsyncIterator[BotOutput]:
        try:
            audio = await self.stages.apology()
        except StageError as exc:
            self._report(exc)
            return
        yield AdditionalOutputs({"role": "assistant", "text": APOLOGY})
        sentence = self._add_sentence(APOLOGY, reply)
        for chunk in audio:
            yield chunk
        yield Mark(sentence.mark)

    def _add_sentence(self, text: str, reply: _Reply) -> _Sentence:
        sentence = _Sentence(text, f"s{next(self._mark_numbers)}")
        reply.sentences.append(sentence)
        self._unheard[sentence.mark] = (sentence, reply)
        return sentence

    # -- telling the operator ------------------------------------------------------------------------

    def _report(self, exc: StageError) -> None:
        logger.warning("call %s: assistant %s stage failed, the caller hears an apology: %s",
                       self.call.call_id, exc.stage, exc,
                       extra={"event": "assistant_stage_error", "call_id": self.call.call_id, "stage": exc.stage,
                              "provider": exc.provider, "error": exc.detail})

    def _log_timings(self, timings: TurnTimings) -> None:
        figures = timings.figures()
        logger.info("call %s: assistant turn: %s", self.call.call_id,
                    ", ".join(f"{name} {value}" for name, value in figures.items() if value is not None),
                    extra={"event": "assistant_turn", "call_id": self.call.call_id, **figures})


async def _sentences_of(text: str) -> AsyncGenerator[str, None]:
    splitter = SentenceSplitter()
    for sentence in splitter.feed(text):
        yield sentence
    if (rest := splitter.flush()) is not None:
        yield rest


class AssistantFactory:
    """Makes one AssistantBot per call; all calls share one `Stages`.

    Given a config, the stages are built at once (cheap: nothing loads yet), so a bad dialog file or model
    folder fails here; without one, they are built from the environment on first use.
    """

    def __init__(self, config: AssistantConfig | None = None) -> None:
        self._config = config
        self._stages = Stages.from_config(config) if config is not None else None

    @property
    def stages(self) -> Stages:
        if self._stages is None:
            self._stages = Stages.from_config(self._config or AssistantConfig.from_env())
        return self._stages

    async def prepare(self) -> None:
        """At start-up: check the settings, load the models, synthesise the apology (errors name the cause)."""
        await self.stages.prepare()

    async def aclose(self) -> None:
        if self._stages is not None:
            await self._stages.aclose()

    def __call__(self, call: CallInfo) -> AssistantBot:
        return AssistantBot(call, self.stages)


def assistant_factory(config: AssistantConfig | None = None) -> AssistantFactory:
    """The factory for the built-in "assistant" bot; raises AssistantConfigError for settings that cannot work."""
    return AssistantFactory(config)
