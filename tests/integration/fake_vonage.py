"""A simulated Vonage Voice API call, speaking Vonage's published WebSocket protocol to a real server.

`answer` asks the answer webhook for the NCCO, as Vonage does (a GET with uuid, conversation_uuid, from, to in
the query; signed with an HS256 JWT over those when given a signature secret). `VonageCaller` opens the NCCO's
websocket endpoint, sends `websocket:connected` with the content-type and the NCCO's headers at the top
level, then every 20 ms one binary 640-byte frame of 16-bit little-endian PCM at 16 kHz (its script's speech,
else silence) and plays one 20 ms frame of what it received. Like Vonage's player it buffers what arrives,
answers a `notify` action with `websocket:notify` (same payload) once the audio sent before it has played, and
on `clear` drops its buffer (and the notifies waiting on it) and answers `websocket:cleared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

RATE = 16000
FRAME = 320  # samples in 20 ms
TICK = FRAME / RATE
#: A 20 ms frame is speech when its power is within 40 dB of the loudest frame's and above -60 dBFS (as in
#: callbridge.simulator).
SPEECH_BELOW_PEAK_DB = 40.0
SPEECH_FLOOR = 32768 * 10 ** (-60 / 20)


def speech_frames(samples: np.ndarray) -> list[np.ndarray]:
    """A phrase as 20 ms frames, the last padded with silence."""
    count = max(1, -(-len(samples) // FRAME))
    padded = np.zeros(count * FRAME, np.int16)
    padded[: len(samples)] = samples
    return list(padded.reshape(count, FRAME))


def speech_span(frames: list[np.ndarray]) -> tuple[int, int]:
    """The first and last frames that are speech, by energy."""
    power = np.array([np.mean(frame.astype(np.float64) ** 2) for frame in frames])
    threshold = max(power.max() * 10 ** (-SPEECH_BELOW_PEAK_DB / 10), SPEECH_FLOOR**2)
    loud = np.flatnonzero(power > threshold)
    return (int(loud[0]), int(loud[-1])) if len(loud) else (0, len(frames) - 1)


def signature(secret: str, payload: bytes, *, iat: float | None = None) -> str:
    """The `Authorization` value Vonage signs a webhook with."""
    claims = {"iat": int(time.time() if iat is None else iat), "jti": secrets.token_hex(8), "api_key": "abc123",
              "payload_hash": hashlib.sha256(payload).hexdigest()}
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


def call_params(uuid: str | None = None) -> dict[str, str]:
    uuid = uuid or secrets.token_hex(16)
    return {"uuid": uuid, "conversation_uuid": "CON-" + uuid, "from": "447700900001", "to": "447700900002"}


def answer(base_url: str, params: dict[str, str], authorization: str | None = None, *,
           method: Literal["GET", "POST"] = "GET") -> tuple[int, Any]:
    """The answer webhook's status and its JSON (or text) body."""
    headers = {"Authorization": authorization} if authorization else {}
    if method == "GET":
        request = urllib.request.Request(f"{base_url}/vonage/answer?{urllib.parse.urlencode(params)}", None, headers)
    else:
        body = json.dumps(params, separators=(",", ":")).encode()
        request = urllib.request.Request(f"{base_url}/vonage/answer", body,
                                         {**headers, "Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_payload(params: dict[str, str]) -> bytes:
    """What Vonage hashes for a GET webhook: the query parameters, in order, as compact JSON."""
    return json.dumps(params, separators=(",", ":")).encode()


def connected_message(endpoint: dict[str, Any]) -> str:
    return json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"],
                       **endpoint["headers"]})


@dataclass(frozen=True)
class Speak:
    samples: np.ndarray  # int16 at 16 kHz


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class WaitForReply:
    """Send silence until a reply starts arriving ("start"), or until it has played and its notify was answered."""

    until: Literal["start", "heard"] = "heard"
    timeout: float = 15.0


Step = Speak | Pause | Dtmf | WaitForReply


@dataclass
class CallRecord:
    frame_sizes: set[int] = field(default_factory=set)
    heard: list[np.ndarray] = field(default_factory=list)  # what the player played, 20 ms at a time
    received_samples: int = 0
    texts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (time, action) received
    speech_starts: list[float] = field(default_factory=list)
    speech_ends: list[float] = field(default_factory=list)  # when each Speak's last loud frame was sent
    reply_starts: list[float] = field(default_factory=list)
    notifies_answered: list[tuple[float, Any]] = field(default_factory=list)
    closed_at: float | None = None  # when the server closed the socket, if it did
    close_code: int | None = None
    close_reason: str = ""

    @property
    def heard_audio(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)

    def actions(self, name: str) -> list[float]:
        return [at for at, message in self.texts if message.get("action") == name]

    def turn_latencies(self) -> list[float]:
        """For each turn, from the end of its speech to the first reply audio after it."""
        latencies = []
        for end in self.speech_ends:
            start = next((s for s in self.reply_starts if s > end), None)
            if start is not None:
                latencies.append(start - end)
        return latencies


class VonageCaller:
    def __init__(self, endpoint: dict[str, Any], script: list[Step], *, hang_up: bool = True,
                 notify_delay: float = 0.0) -> None:
        self.endpoint = endpoint
        self.script = script
        self.hang_up = hang_up  # close the socket once the script is done (else wait for the server to)
        self.notify_delay = notify_delay  # extra seconds before a played notify is answered
        self.record = CallRecord()
        self._buffer: deque[np.ndarray] = deque()
        self._received_frames = 0  # frames received so far
        self._played_frames = 0
        self._notifies: list[tuple[int, Any]] = []  # (frames received before it, payload)
        self._in_reply = False
        self._answers: set[asyncio.Task[None]] = set()

    async def run(self) -> CallRecord:
        record = self.record
        async with connect(self.endpoint["uri"], max_size=None) as ws:
            await ws.send(connected_message(self.endpoint))
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._play_script(ws)
                deadline = asyncio.get_running_loop().time() + 10
                while not self.hang_up and not receiver.done() and asyncio.get_running_loop().time() < deadline:
                    await self._tick(ws)  # on the line, silent, until the server hangs up
            except ConnectionClosed:
                pass
            finally:
                await asyncio.gather(*self._answers, return_exceptions=True)  # the notifies already played
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
        record.close_code, record.close_reason = ws.close_code, ws.close_reason or ""
        return record

    async def _receive(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            await self._read(ws, loop)
        self.record.closed_at = loop.time()

    async def _read(self, ws: Any, loop: asyncio.AbstractEventLoop) -> None:
        async for message in ws:
            now = loop.time()
            if isinstance(message, bytes):
                self.record.frame_sizes.add(len(message))
                samples = np.frombuffer(message, "<i2").astype(np.int16)
                self._buffer.append(samples)
                self._received_frames += 1
                self.record.received_samples += len(samples)
                if not self._in_reply:
                    self._in_reply = True
                    self.record.reply_starts.append(now)
                continue
            action = json.loads(message)
            self.record.texts.append((now, action))
            if action.get("action") == "notify":
                self._notifies.append((self._received_frames, action.get("payload")))
            elif action.get("action") == "clear":
                self._buffer.clear()
                self._played_frames = self._received_frames
                self._notifies.clear()
                self._in_reply = False
                await ws.send(json.dumps({"event": "websocket:cleared"}))

    async def _play_script(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time()
        for step in self.script:
            if isinstance(step, Speak):
                frames = speech_frames(step.samples)
                first, last = speech_span(frames)
                for index, frame in enumerate(frames):
                    await self._tick(ws, frame)
                    if index == first:  # a frame carries the 20 ms captured before it is sent
                        self.record.speech_starts.append(loop.time() - TICK)
                    if index == last:
                        self.record.speech_ends.append(loop.time())
            elif isinstance(step, Pause):
                for _ in range(round(step.seconds / TICK)):
                    await self._tick(ws)
            elif isinstance(step, Dtmf):
                await ws.send(json.dumps({"event": "websocket:dtmf", "digit": step.digit, "duration": 260}))
            else:
                replies = len(self.record.reply_starts)
                deadline = loop.time() + step.timeout
                while loop.time() < deadline:
                    await self._tick(ws)
                    if len(self.record.reply_starts) > replies and (step.until == "start" or not self._in_reply):
                        break

    async def _tick(self, ws: Any, frame: np.ndarray | None = None) -> None:
        """Wait for the next 20 ms tick; send one frame of the caller's audio and play one of the bot's."""
        loop = asyncio.get_running_loop()
        self._next_tick += TICK
        await asyncio.sleep(max(0.0, self._next_tick - loop.time()))
        await ws.send((frame if frame is not None else np.zeros(FRAME, np.int16)).astype("<i2").tobytes())
        if self._buffer:
            self.record.heard.append(self._buffer.popleft())
            self._played_frames += 1
        for notify in [n for n in self._notifies if n[0] <= self._played_frames]:
            self._notifies.remove(notify)
            self._answers.add(asyncio.create_task(self._answer_notify(ws, notify[1])))
            if not self._buffer:
                self._in_reply = False

    async def _answer_notify(self, ws: Any, payload: Any) -> None:
        await asyncio.sleep(self.notify_delay)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"event": "websocket:notify", "payload": payload}))
            self.record.notifies_answered.append((asyncio.get_running_loop().time(), payload))
