"""Everything OpenAI-compatible: the providers that speak the OpenAI wire protocol to a configured URL.

- `OpenAIChat`: a brain streaming Chat Completions.
- `OpenAITranscription`: speech-to-text by `/v1/audio/transcriptions`.
- `OpenAISpeech`: text-to-speech by `/v1/audio/speech`, raw PCM at 24 kHz.

This is the only module that imports the OpenAI SDK (over a second to import), and nothing imports it
unless a provider URL is configured, so the offline assistant never pays for it.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai

from callbridge.bots.assistant.brain import DEFAULT_SYSTEM_PROMPT, END_CALL, Action, EndCallAction, Tool, ToolCall
from callbridge.bots.assistant.stage import StageError, first_within
from callbridge.bots.assistant.tts import CHUNK_SECONDS
from callbridge.bots.base import Audio
from callbridge.redact import redact_url

NO_KEY = "no-key"
#: The rate and format of OpenAI's `response_format="pcm"`: 16-bit little-endian mono.
OPENAI_PCM_RATE = 24000


def client(base_url: str, api_key: str, timeout: float) -> openai.AsyncOpenAI:
    """A client for `base_url` alone: no retries (the caller is waiting), no key read from the environment.

    Without a key the SDK still wants one: a placeholder goes out, which servers without auth ignore.
    """
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0)


def stage_error(stage: str, provider: str, exc: openai.OpenAIError) -> StageError:
    """What the provider said: its status code and error message, or why it could not be reached."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or exc.response.reason_phrase
        return StageError(stage, provider, f"HTTP {exc.status_code}: {message}")
    if isinstance(exc, openai.APITimeoutError):
        return StageError(stage, provider, "timed out")
    if isinstance(exc, openai.APIConnectionError):
        return StageError(stage, provider, f"cannot connect: {exc.__cause__ or exc}")
    return StageError(stage, provider, str(exc))


# -- the brain ---------------------------------------------------------------------------------------


@dataclass
class _CallFragments:
    call_id: str = ""
    name: str = ""
    arguments: str = ""


class OpenAIChat:
    """Chat Completions, streamed; the HTTP stream is closed as soon as the consumer stops reading."""

    greeting = None
    idle_prompt = None  # the bot's fixed lines: an idle caller gives the LLM nothing to answer
    idle_goodbye = None

    def __init__(self, base_url: str, model: str, api_key: str = "", system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                 first_token_timeout: float = 10.0) -> None:
        self.model = model
        self.system_prompt = system_prompt
        self.first_token_timeout = first_token_timeout
        self.name = f"{redact_url(base_url)} model {model}"
        self._client = client(base_url, api_key, first_token_timeout)

    async def aclose(self) -> None:
        """Close the HTTP connections (at shutdown)."""
        await self._client.close()

    def respond(
        self, history: Sequence[Mapping[str, str]], tools: Sequence[Tool]
    ) -> AsyncGenerator[str | Action, None]:
        return first_within(self._stream(history, tools), self.first_token_timeout, "llm", self.name)

    async def _stream(
        self, history: Sequence[Mapping[str, str]], tools: Sequence[Tool]
    ) -> AsyncGenerator[str | Action, None]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [dict(message) for message in history]
        options: dict[str, Any] = {"tools": [tool.as_openai() for tool in tools]} if tools else {}
        calls: dict[int, _CallFragments] = {}
        try:
            stream = await self._client.chat.completions.create(
                model=self.model, messages=messages, stream=True, **options)
            async with stream:
                async for chunk in stream:
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    for fragment in delta.tool_calls or ():
                        call = calls.setdefault(fragment.index, _CallFragments())
                        call.call_id += fragment.id or ""
                        if fragment.function is not None:
                            call.name += fragment.function.name or ""
                            call.arguments += fragment.function.arguments or ""
                    if delta.content:
                        yield delta.content
        except openai.OpenAIError as exc:
            raise stage_error("llm", self.name, exc) from exc
        for _, call in sorted(calls.items()):
            yield self._action(call)

    def _action(self, call: _CallFragments) -> Action:
        if call.name == END_CALL.name:
            return EndCallAction()
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError:
            raise StageError("llm", self.name, f"tool call {call.name} has arguments that are not JSON") from None
        return ToolCall(call.name, arguments, call.call_id)


# -- speech-to-text ----------------------------------------------------------------------------------


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.asarray(audio, dtype=np.int16).tobytes())
    return buffer.getvalue()


class OpenAITranscription:
    """An OpenAI-compatible transcription endpoint, sent each turn as a WAV file made in memory."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 10.0) -> None:
        self.model = model
        self.name = f"{redact_url(base_url)} model {model}"
        self._client = client(base_url, api_key, timeout)

    async def aclose(self) -> None:
        """Close the HTTP connections (at shutdown)."""
        await self._client.close()

    async def transcribe(self, audio: np.ndarray, sample_rate: int, *, prompt: str = "") -> str:
        try:
            result = await self._client.audio.transcriptions.create(
                model=self.model, file=("turn.wav", wav_bytes(audio, sample_rate), "audio/wav"),
                **({"prompt": prompt} if prompt else {}),
            )
        except openai.OpenAIError as exc:
            raise stage_error("stt", self.name, exc) from exc
        return result.text.strip()


# -- text-to-speech ----------------------------------------------------------------------------------


class OpenAISpeech:
    """An OpenAI-compatible speech endpoint, its raw PCM streamed as it arrives."""

    def __init__(self, base_url: str, model: str, voice: str, api_key: str = "", timeout: float = 10.0) -> None:
        self.model = model
        self.voice = voice
        self.timeout = timeout
        self.name = f"{redact_url(base_url)} model {model}"
        self._client = client(base_url, api_key, timeout)

    async def aclose(self) -> None:
        """Close the HTTP connections (at shutdown)."""
        await self._client.close()

    def synthesize(self, text: str) -> AsyncGenerator[Audio, None]:
        return first_within(self._speak(text), self.timeout, "tts", self.name)

    async def _speak(self, text: str) -> AsyncGenerator[Audio, None]:
        piece = int(OPENAI_PCM_RATE * CHUNK_SECONDS) * 2
        try:
            async with self._client.audio.speech.with_streaming_response.create(
                model=self.model, voice=self.voice, input=text, response_format="pcm",
            ) as response:
                carry = b""
                async for data in response.iter_bytes(piece):
                    data = carry + data
                    whole = len(data) // 2 * 2
                    carry = data[whole:]
                    if whole:
                        yield Audio(np.frombuffer(data[:whole], dtype="<i2").copy(), OPENAI_PCM_RATE)
        except openai.OpenAIError as exc:
            raise stage_error("tts", self.name, exc) from exc
