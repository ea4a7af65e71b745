"""Test helpers for the assistant: phone-quality speech, and a local server speaking OpenAI's wire protocol.

`FakeOpenAI` answers on 127.0.0.1 as an OpenAI-compatible provider does: Chat Completions streamed as
server-sent `chat.completion.chunk` events ending in `data: [DONE]` (tool calls as `delta.tool_calls`
fragments), `/v1/audio/transcriptions` (multipart), `/v1/audio/speech` (raw PCM), and errors in OpenAI's
JSON shape. Each test queues what the server should answer and reads back what it received.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from callbridge.codec import resample
from tests.speech import speech

T = TypeVar("T")

ERROR_KINDS = {
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
}


class Providers:
    """Provider objects a test made, closed at its end (their HTTP clients must not outlive the test's loop)."""

    def __init__(self) -> None:
        self._made: list[Any] = []

    def add(self, provider: T) -> T:
        self._made.append(provider)
        return provider

    async def aclose(self) -> None:
        for provider in self._made:
            await provider.aclose()


def words(text: str) -> list[str]:
    """Lower-case words, for comparing what was said with what was heard."""
    return re.findall(r"[a-z']+", text.lower())


def phone_speech(text: str, voice: str = "en-us") -> np.ndarray:
    """`text` spoken by espeak-ng, band-limited to the phone's 8 kHz, then brought up to Whisper's 16 kHz."""
    return resample(speech(text, 8000, voice=voice), 8000, 16000)


def error_response(status: int) -> web.Response:
    message, kind, code = ERROR_KINDS[status]
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status)


@dataclass
class ChatReply:
    """One Chat Completions answer: text deltas, then tool calls, each event `interval` seconds apart."""

    deltas: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, JSON arguments)
    interval: float = 0.0
    status: int = 200
    #: Seconds before the response headers are sent.
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Streamed:
    """How one streamed response ended: how many events went out, and whether the client hung up first."""

    sent: int
    total: int
    disconnected: bool
    at: float


class FakeOpenAI:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.chat_replies: deque[ChatReply] = deque()
        self.transcripts: deque[str | int] = deque()
        #: Status codes for the next speech requests; 200 (default) streams `speech_pcm`.
        self.speech_statuses: deque[int] = deque()
        self.streams: list[Streamed] = []
        self.stream_ended = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        app.router.add_post("/v1/audio/speech", self._speech)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)  # slow handlers are cut off at the end
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def chats(self) -> list[Received]:
        return [r for r in self.received if r.path == "/v1/chat/completions"]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received(request.path, dict(request.headers), body))
        reply = self.chat_replies.popleft() if self.chat_replies else ChatReply(["OK."])
        await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return error_response(reply.status)
        events = [self._chunk(body, {"role": "assistant", "content": ""})]
        events += [self._chunk(body, {"content": delta}) for delta in reply.deltas]
        for index, (name, arguments) in enumerate(reply.tool_calls):
            events.append(self._chunk(body, {"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                                             "function": {"name": name, "arguments": ""}}]}))
            middle = len(arguments) // 2
            for piece in (arguments[:middle], arguments[middle:]):
                events.append(self._chunk(body, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        events.append(self._chunk(body, {}, "tool_calls" if reply.tool_calls else "stop"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        try:
            for event in events:
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                sent += 1
                await asyncio.sleep(reply.interval)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            self._ended(sent, len(events), disconnected=True)
            return response
        except asyncio.CancelledError:
            self._ended(sent, len(events), disconnected=True)
            raise
        self._ended(sent, len(events), disconnected=False)
        return response

    def _ended(self, sent: int, total: int, disconnected: bool) -> None:
        self.streams.append(Streamed(sent, total, disconnected, time.monotonic()))
        self.stream_ended.set()

    @staticmethod
    def _chunk(body: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    async def _transcription(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        audio = upload.file.read()
        self.received.append(Received(request.path, dict(request.headers),
                                      {"model": form.get("model"), "filename": upload.filename, "file": audio,
                                       "prompt": form.get("prompt")}))
        answer = self.transcripts.popleft() if self.transcripts else ""
        if isinstance(answer, int):
            return error_response(answer)
        return web.json_response({"text": answer})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received(request.path, dict(request.headers), body))
        status = self.speech_statuses.popleft() if self.speech_statuses else 200
        if status != 200:
            return error_response(status)
        pcm = speech_pcm(body["input"]).tobytes()
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        for start in range(0, len(pcm), 4801):  # odd pieces: a sample may straddle two reads
            await response.write(pcm[start : start + 4801])
        await response.write_eof()
        return response


def speech_pcm(text: str) -> np.ndarray:
    """What the fake speech endpoint says for `text`: a 24 kHz tone, 0.1 s per word (deterministic)."""
    samples = np.arange(int(0.1 * 24000 * len(text.split())))
    return (np.sin(2 * np.pi * 300 * samples / 24000) * 8000).astype("<i2")
