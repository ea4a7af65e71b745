"""A simulated Twilio caller: plays audio into /telephone/handler in real time, as Twilio would.

It starts the call through the webhook (`POST /telephone/incoming`, signed when an auth token is
given), connects to the Stream URL from the TwiML with its `<Parameter>`s, then every 20 ms sends one
`media` frame of the caller's script and plays one frame of the bot's audio. Like Twilio's player it
echoes a `mark` once the audio sent before it has played, and on `clear` drops what it buffered and
echoes the pending marks at once. It records what the caller heard and when things happened.

Latency is measured from the end of the caller's speech (the last loud 20 ms frame of a Speak), not from the
end of its audio: a recording's trailing silence is part of the caller's pause, which the server waits out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from callbridge.codec import FRAME_MS, alaw_decode, resample, ulaw_decode, ulaw_encode
from callbridge.core.messages import ends_reply

RATE = 8000
FRAME = RATE * FRAME_MS // 1000
TICK = FRAME / RATE
#: A 20 ms frame is speech when its RMS is within 40 dB of the loudest frame's and above -60 dBFS.
SPEECH_BELOW_PEAK_DB = 40.0
SPEECH_FLOOR_DBFS = -60.0
#: `python -m callbridge call` speaks once the bot has played nothing for this long (its greeting is over).
#: After the last answer it stays on the line `--hold` seconds, silent (a bot's hang-up meanwhile is seen as the
#: bot's): 0.5 by default, longer to hear an idle caller's re-prompts and hang-up (IDLE_SECONDS).
GREETING_QUIET = 0.5


@dataclass(frozen=True)
class Speak:
    samples: np.ndarray  # int16 at 8 kHz


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class WaitForReply:
    """Send silence until the bot's reply starts arriving, or until it has been heard to the end."""

    until: Literal["start", "heard"] = "heard"
    timeout: float = 15.0


@dataclass(frozen=True)
class WaitForQuiet:
    """Send silence until nothing has played for `quiet` seconds (a greeting heard to its end), at most `timeout`."""

    quiet: float = 0.5
    timeout: float = 15.0


@dataclass(frozen=True)
class Dtmf:
    digits: str


Step = Speak | Pause | WaitForReply | WaitForQuiet | Dtmf


@dataclass
class CallReport:
    #: The timeline, seconds from the call's start: speech_start/speech_end (a turn), reply (first audio; its
    #: detail says how much was heard), mark (received), mark_echo, clear, dtmf, hangup, closed, other. A reply
    #: runs from its first audio to its end mark, or to a `clear`.
    events: list[tuple[float, str, str]] = field(default_factory=list)
    speech_ends: list[float] = field(default_factory=list)  # when each Speak's last speech frame was sent
    speech_starts: list[float] = field(default_factory=list)  # when each Speak's first speech frame was captured
    reply_starts: list[float] = field(default_factory=list)  # first media of each reply received
    reply_heard: list[float] = field(default_factory=list)  # seconds of each reply played (cleared audio is not)
    clears: list[float] = field(default_factory=list)
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    heard: list[np.ndarray] = field(default_factory=list)  # what the player played, frame by frame
    received_samples: int = 0
    stall_seconds: float = 0.0
    reply_seconds: float = 0.0
    max_buffered_seconds: float = 0.0  # most audio ever waiting in the player: how far ahead the bot sends
    rejected: str = ""
    close_code: int | None = None
    close_reason: str = ""

    def log(self, t: float, kind: str, detail: str = "") -> None:
        self.events.append((t, kind, detail))

    @property
    def heard_audio(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)

    def turn_latencies(self) -> list[float]:
        """For each reply, seconds from the end of the speech before it to its first audio."""
        latencies = []
        for start in self.reply_starts:
            before = [end for end in self.speech_ends if end <= start]
            if before:
                latencies.append(start - before[-1])
        return latencies

    def answers(self) -> list[tuple[float, str, int | None]]:
        """Each prompt (a turn's end of speech, a DTMF digit) with the reply that answered it: the first to
        start after it and before the next prompt, as (time, "turn N" or "digit D", reply index or None)."""
        prompts = []
        for t, kind, detail in self.events:
            if kind == "speech_end":
                prompts.append((t, detail))
            elif kind == "dtmf":
                prompts.append((t, f"digit {detail}"))
        answers = []
        for k, (t, what) in enumerate(prompts):
            until = prompts[k + 1][0] if k + 1 < len(prompts) else float("inf")
            reply = next((i for i, r in enumerate(self.reply_starts) if t <= r < until), None)
            answers.append((t, what, reply))
        return answers

    def timeline(self) -> list[str]:
        """The events as the command prints them, one a line."""
        return [f"{t:8.3f} s  {kind:<12} {detail}".rstrip() for t, kind, detail in self.events]

    def finish(self) -> None:
        """A reply's duration is known once it has played: written into its event at the end of the call."""
        n = 0
        for k, (t, kind, _) in enumerate(self.events):
            if kind == "reply" and n < len(self.reply_heard):
                self.events[k] = (t, kind, f"#{n + 1}: {self.reply_heard[n]:.2f} s heard")
                n += 1


def webhook(base_url: str, auth_token: str = "", public_url: str = "", path: str = "/telephone/incoming",
            **form: str) -> tuple[str, dict[str, str]]:
    """POST the webhook at `path` (the incoming call's, or the Url an outbound call was placed with) as Twilio
    does; returns the Stream URL and its parameters. `form` adds to or overrides Twilio's fields.

    Raises RuntimeError with the server's answer if the call was rejected or refused."""
    url = base_url.rstrip("/") + path
    params = {"CallSid": "CA" + secrets.token_hex(16), "AccountSid": "AC" + secrets.token_hex(16),
              "From": "+15550100001", "To": "+15550100002", "Direction": "inbound", **form}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        signed_url = (public_url.rstrip("/") or base_url.rstrip("/")) + path
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(signed_url, params)
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            twiml = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"webhook answered {exc.code}: {exc.read().decode(errors='replace')}") from None
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        raise RuntimeError(f"the webhook did not answer TwiML (is this callbridge?): {twiml[:200]!r}") from None
    if root.find("Reject") is not None:
        raise RuntimeError(f"call rejected: {twiml}")
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise RuntimeError(f"no <Connect><Stream> in TwiML: {twiml}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    parameters["CallSid"] = params["CallSid"]
    return stream.get("url", ""), parameters


def start_message(stream_sid: str, call_sid: str, parameters: dict[str, str]) -> str:
    """Twilio's `start`: the stream's ids, the TwiML's <Parameter>s, the media format."""
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": "AC" + "0" * 32, "streamSid": stream_sid, "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": parameters,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def stop_message(stream_sid: str, call_sid: str) -> str:
    return json.dumps({"event": "stop", "streamSid": stream_sid,
                       "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid}})


def speech_span(samples: np.ndarray) -> tuple[int, int]:
    """The first and last 20 ms frames (as `speech_frames` cuts them) that are speech, by energy; a phrase
    with no frame loud enough is speech throughout."""
    audio = np.asarray(samples, dtype=np.float64)
    count = max(1, -(-len(audio) // FRAME))
    padded = np.zeros(count * FRAME)
    padded[: len(audio)] = audio
    sizes = np.full(count, FRAME)
    sizes[-1] = max(1, len(audio) - (count - 1) * FRAME)  # the last frame's RMS is over its samples, not padding
    power = (padded.reshape(count, FRAME) ** 2).sum(axis=1) / sizes
    threshold = max(power.max() * 10 ** (-SPEECH_BELOW_PEAK_DB / 10), (32768 * 10 ** (SPEECH_FLOOR_DBFS / 20)) ** 2)
    loud = np.flatnonzero(power > threshold)
    return (int(loud[0]), int(loud[-1])) if len(loud) else (0, count - 1)


def speech_frames(samples: np.ndarray) -> list[np.ndarray]:
    """A phrase as 20 ms frames of int16, the last padded with silence."""
    audio = np.asarray(samples, dtype=np.int16)
    count = max(1, -(-len(audio) // FRAME))
    padded = np.zeros(count * FRAME, np.int16)
    padded[: len(audio)] = audio
    return [padded[i * FRAME : (i + 1) * FRAME] for i in range(count)]


class SimulatedCaller:
    def __init__(self, base_url: str, script: list[Step], *, auth_token: str = "", public_url: str = "",
                 hangup_when_done: bool = True, webhook_path: str = "/telephone/incoming",
                 webhook_form: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.webhook_path = webhook_path
        self.webhook_form = webhook_form or {}
        self.script = script
        self.auth_token = auth_token
        self.public_url = public_url
        self.hangup_when_done = hangup_when_done
        self.report = CallReport()
        self.stream_sid = ""
        self._call_sid = ""
        self._buffer: deque[np.ndarray] = deque()
        self._buffered = 0
        self._received_total = 0
        self._played_total = 0
        self._pending_marks: deque[tuple[int, str]] = deque()
        self._reply_open = False  # media arrived since the last mark
        self._reply_positions: list[int] = []  # stream position where each reply starts
        self._replies_before_prompt = 0  # replies started before the last end of speech or DTMF
        self._stopped = False
        self._t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def _answer(self) -> tuple[str, dict[str, str], list[str]]:
        """The call as the carrier starts it (blocking): the webhook, then the stream's URL, the upgrade's
        headers and the stream's first messages. Raises RuntimeError when the webhook refuses the call."""
        stream_url, params = webhook(self.base_url, self.auth_token, self.public_url, self.webhook_path,
                                     **self.webhook_form)
        self._call_sid = params.pop("CallSid")
        path = urllib.parse.urlsplit(stream_url).path
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + path
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(stream_url, {})
        self.stream_sid = "MZ" + secrets.token_hex(16)
        return ws_url, headers, [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                                 start_message(self.stream_sid, self._call_sid, params)]

    #: How `_hang_up` hangs up, for the timeline.
    hangup_note = "the caller sent stop"

    async def _hang_up(self, ws) -> None:
        await ws.send(stop_message(self.stream_sid, self._call_sid))

    async def run(self) -> CallReport:
        self._t0 = time.monotonic()
        try:
            ws_url, headers, opening = await asyncio.to_thread(self._answer)
        except RuntimeError as exc:
            self.report.rejected = str(exc)
            return self.report
        async with connect(ws_url, additional_headers=headers, max_size=None, open_timeout=10) as ws:
            self.ws = ws
            for message in opening:
                await ws.send(message)
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._send_script(ws)
                if self.hangup_when_done:
                    self._stopped = True
                    self.report.log(self.now(), "hangup", self.hangup_note)
                    await self._hang_up(ws)
                    await asyncio.wait_for(asyncio.shield(receiver), 5)
                else:
                    await receiver
            except (ConnectionClosed, TimeoutError):
                pass
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
        self.report.close_code = ws.close_code
        self.report.close_reason = ws.close_reason or ""
        if not any(kind in ("hangup", "closed") for _, kind, _ in self.report.events):
            self.report.log(self.now(), "closed", f"by the caller, code {ws.close_code}")
        self.report.finish()
        return self.report

    async def _receive(self, ws) -> None:
        """Twilio's side of the socket: each message to its handler, until the server closes."""
        try:
            async for raw in ws:
                if self._dispatch(self.now(), raw):
                    await self._echo_marks(ws)
        except ConnectionClosed:
            pass
        closed = f"code {ws.close_code} {ws.close_reason or ''}".rstrip()
        if self._stopped:
            self.report.log(self.now(), "closed", closed)
        else:
            self.report.log(self.now(), "hangup", f"the server closed the socket ({closed})")

    def _dispatch(self, t: float, raw: str | bytes) -> bool:
        """One message from the server to its handler; True when pending marks are due at once (a `clear`)."""
        message = json.loads(raw)
        event = message.get("event")
        if event == "media":
            self._on_media(t, base64.b64decode(message["media"]["payload"]))
        elif event == "mark":
            self._on_mark(message["mark"]["name"])
        elif event == "clear":
            self._on_clear(t)
            return True
        else:
            self._on_other(t, raw)
        return False

    def _on_media(self, t: float, ulaw: bytes) -> None:
        samples = ulaw_decode(ulaw)
        if not self._reply_open:
            self._reply_open = True
            self.report.reply_starts.append(t)
            self.report.reply_heard.append(0.0)
            self._reply_positions.append(self._received_total)
            self.report.log(t, "reply")
        self._buffer.append(samples)
        self._buffered += len(samples)
        self.report.max_buffered_seconds = max(self.report.max_buffered_seconds, self._buffered / RATE)
        self._received_total += len(samples)
        self.report.received_samples += len(samples)

    def _on_mark(self, name: str) -> None:
        """The mark is echoed once the audio received before it has played. A reply ends at its own mark, not
        at the marks callbridge places inside it (a bot's Mark, a resume point)."""
        self.report.marks_received.append(name)
        self.report.log(self.now(), "mark", name)
        self._pending_marks.append((self._received_total, name))
        if ends_reply(name):
            self._reply_open = False

    def _on_clear(self, t: float) -> None:
        """Drop what is buffered; the pending marks are echoed at once."""
        self.report.clears.append(t)
        self.report.log(t, "clear", f"{self._buffered / RATE:.2f} s of buffered reply dropped")
        self._buffer.clear()
        self._buffered = 0
        self._played_total = self._received_total
        self._reply_open = False

    def _on_other(self, t: float, raw: str | bytes) -> None:
        self.report.log(t, "other", raw if isinstance(raw, str) else "<binary>")

    async def _echo_marks(self, ws) -> None:
        while self._pending_marks and self._pending_marks[0][0] <= self._played_total:
            _, name = self._pending_marks.popleft()
            self.report.marks_echoed.append(name)
            self.report.log(self.now(), "mark_echo", name)
            await ws.send(self._mark_echo(name))

    def _mark_echo(self, name: str) -> str:
        """The message saying the audio before mark `name` has played."""
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def _media_message(self, chunk: int, payload: str) -> str:
        """The caller's `chunk`th 20 ms frame, base64 µ-law."""
        return json.dumps({
            "event": "media", "sequenceNumber": str(chunk + 1), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20), "payload": payload},
        })

    def _dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "streamSid": self.stream_sid,
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def _play_frame(self) -> None:
        """Twilio's player: 20 ms of whatever is buffered; an empty buffer mid-reply is a stall."""
        need = FRAME
        out = []
        while need and self._buffer:
            head = self._buffer[0]
            take = head[:need]
            out.append(take)
            need -= len(take)
            if len(take) == len(head):
                self._buffer.popleft()
            else:
                self._buffer[0] = head[len(take):]
        played = FRAME - need
        self._buffered -= played
        if played:
            self._count_heard(self._played_total, played)
            self.report.heard.append(np.concatenate(out))
            self.report.reply_seconds += played / RATE
        self._played_total += played
        if need and self._reply_open:
            self.report.stall_seconds += need / RATE

    def _count_heard(self, position: int, count: int) -> None:
        """Credit `count` samples played from stream `position` on to the replies they belong to."""
        starts = self._reply_positions
        reply = bisect_right(starts, position) - 1
        while count > 0 and reply >= 0:
            end = starts[reply + 1] if reply + 1 < len(starts) else position + count
            take = min(count, end - position)
            self.report.reply_heard[reply] += take / RATE
            position, count, reply = position + take, count - take, reply + 1

    def _playing(self) -> bool:
        """The bot's audio is arriving or waiting to be played, or a mark is waiting to be echoed."""
        return self._reply_open or bool(self._pending_marks) or self._buffered > 0

    #: What `_frames` yields for a tick without speech (a subclass may send frames in another form).
    _silence_frame: Any = np.zeros(FRAME, np.int16)

    def _speech_frames(self, step: Speak) -> Sequence[Any]:
        """A phrase as the frames `_frames` yields for it."""
        return speech_frames(step.samples)

    def _frames(self) -> Iterator[tuple[Any, Step | None, str]]:
        """The caller's audio, one 20 ms frame per tick: (frame, step, marker)."""
        silence = self._silence_frame
        for step in self.script:
            if isinstance(step, Speak):
                # "first"/"last" mark the speech itself: leading and trailing silence are sent unmarked
                first, last = speech_span(step.samples)
                for i, frame in enumerate(self._speech_frames(step)):
                    marker = ""
                    if i == first:
                        marker = "only" if first == last else "first"
                    elif i == last:
                        marker = "last"
                    if marker in ("last", "only"):
                        self._replies_before_prompt = len(self.report.reply_starts)
                    yield frame, step, marker
            elif isinstance(step, Pause):
                for _ in range(round(step.seconds / TICK)):
                    yield silence, step, ""
            elif isinstance(step, Dtmf):
                self._replies_before_prompt = len(self.report.reply_starts)
                yield silence, step, "dtmf"
            elif isinstance(step, WaitForQuiet):
                quiet, needed = 0, round(step.quiet / TICK)
                for _ in range(round(step.timeout / TICK)):
                    quiet = 0 if self._playing() else quiet + 1
                    if quiet >= needed:
                        break
                    yield silence, step, ""
            else:
                # A reply counts from the end of speech (or the digit) it answers, even when it starts during
                # the phrase's trailing silence, before this step.
                for _ in range(round(step.timeout / TICK)):
                    replied = len(self.report.reply_starts) > self._replies_before_prompt
                    if replied and (step.until == "start" or not self._playing()):
                        break
                    yield silence, step, ""

    async def _send_script(self, ws) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        for chunk, (frame, step, marker) in enumerate(self._frames(), start=1):
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_tick += TICK
            t = self.now()
            if marker in ("first", "only"):
                # A frame carries the 20 ms captured before it is sent, as Twilio's do.
                self.report.speech_starts.append(t - TICK)
                self.report.log(t - TICK, "speech_start", f"turn {len(self.report.speech_starts)}")
            payload = base64.b64encode(ulaw_encode(frame)).decode()
            await ws.send(self._media_message(chunk, payload))
            if marker in ("last", "only"):
                self.report.speech_ends.append(self.now())
                self.report.log(self.now(), "speech_end", f"turn {len(self.report.speech_ends)}")
            if marker == "dtmf" and isinstance(step, Dtmf):
                for digit in step.digits:
                    await ws.send(self._dtmf_message(digit))
                    self.report.log(self.now(), "dtmf", digit)
            self._play_frame()
            await self._echo_marks(ws)


class AudioError(Exception):
    """The caller's audio cannot be had; the message is the one line the command prints."""


#: WAV format codes the simulator decodes (WAVE_FORMAT_EXTENSIBLE names one of them in its sub-format).
_PCM, _FLOAT, _ALAW, _ULAW, _EXTENSIBLE = 1, 3, 6, 7, 0xFFFE


def decode_wav(data: bytes) -> np.ndarray:
    """Any WAV a tester may have, as mono int16 at 8 kHz: PCM 8/16/24/32-bit, float, µ-law or A-law, any rate
    and channel count (mixed down). The `wave` module reads only PCM, and refuses a streamed header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("not a WAV file (no RIFF/WAVE header)")
    fmt = body = None
    position = 12
    while position + 8 <= len(data) and body is None:
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        start = position + 8
        if chunk == b"fmt ":
            fmt = data[start : start + size]
        elif chunk == b"data":
            body = data[start : start + size]  # a streamed WAV (espeak-ng --stdout) has a size beyond its end
        position = start + size + (size & 1)
    if fmt is None or len(fmt) < 16 or body is None:
        raise AudioError("a WAV file without its fmt or data chunk")
    code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if code == _EXTENSIBLE and len(fmt) >= 26:
        code = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID starts with the format code
    readable = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64), _ULAW: (8,), _ALAW: (8,)}
    if bits not in readable.get(code, ()):
        raise AudioError(f"a WAV file encoded as format {code}, {bits}-bit: PCM (8, 16, 24, 32-bit), float, "
                         "µ-law and A-law are read")
    if channels < 1 or rate < 1:
        raise AudioError(f"a WAV file with {channels} channel(s) at {rate} Hz")
    width = bits // 8
    body = body[: len(body) // (width * channels) * width * channels]
    if code == _PCM and bits == 8:
        samples = (np.frombuffer(body, np.uint8).astype(np.float64) - 128) * 256
    elif code == _PCM:
        raw = np.frombuffer(body, np.uint8).reshape(-1, width).astype(np.int64)
        value = sum(raw[:, k] << (8 * k) for k in range(width))
        value -= (value >> (bits - 1)) << bits  # two's complement
        samples = value.astype(np.float64) / 2 ** (bits - 16)
    elif code == _FLOAT:
        samples = np.nan_to_num(np.frombuffer(body, "<f4" if bits == 32 else "<f8").astype(np.float64)) * 32767
    else:
        samples = (ulaw_decode if code == _ULAW else alaw_decode)(body).astype(np.float64)
    if not len(samples):
        raise AudioError("a WAV file with no audio in it")
    mono = np.clip(np.rint(samples.reshape(-1, channels).mean(axis=1)), -32768, 32767).astype(np.int16)
    return resample(mono, rate, RATE) if rate != RATE else mono


def load_wav(path: str) -> np.ndarray:
    """The WAV at `path` as mono int16 at 8 kHz (see `decode_wav`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_wav(data)
    except AudioError as exc:
        raise AudioError(f"{path}: {exc}") from None


def say(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, as mono int16 at 8 kHz: a caller's line without making a WAV first."""
    try:
        done = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, timeout=60)
    except FileNotFoundError:
        raise AudioError("--say needs espeak-ng (apt-get install espeak-ng); or give a WAV file") from None
    if done.returncode != 0:
        raise AudioError(f"espeak-ng failed: {done.stderr.decode(errors='replace').strip()}")
    return decode_wav(done.stdout)


def save_wav(path: str, samples: np.ndarray) -> None:
    import wave

    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def default_url() -> tuple[str, str]:
    """The local server as `python -m callbridge` would start it here: PORT from the environment or `.env`.
    Returns the URL and a note to print when the settings are invalid (the PORT given, or 8000, is used)."""
    from callbridge.settings import SettingsError, load_settings

    try:
        return f"http://127.0.0.1:{load_settings().port}", ""
    except SettingsError as exc:
        from dotenv import dotenv_values

        raw = (os.environ.get("PORT") or dotenv_values(".env").get("PORT") or "").strip()
        port = int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else 8000
        problem = " ".join(line.strip() for line in str(exc).splitlines())
        return f"http://127.0.0.1:{port}", f"{problem}; calling port {port}"


def main(args) -> int:
    """`python -m callbridge call`: one simulated phone call, with its timeline and what the caller heard."""
    if bool(args.wav) == bool(args.say):
        print("callbridge call: give a WAV file or --say TEXT (one of them)")
        return 2
    try:
        speech = load_wav(args.wav) if args.wav else say(args.say)
    except AudioError as exc:
        print(f"callbridge call: {exc}")
        return 2
    url, note = (args.url, "") if args.url else default_url()
    if note:
        print(f"callbridge call: {note}")
    # Wait out a greeting (nothing played for GREETING_QUIET), as a polite caller would, unless told not to.
    script: list[Step] = [Pause(0.3) if args.talk_over else WaitForQuiet(GREETING_QUIET, timeout=args.wait),
                          Speak(speech), WaitForReply("heard", timeout=args.wait)]
    for digit in args.dtmf:
        script += [Dtmf(digit), WaitForReply("heard", timeout=args.dtmf_wait)]
    script.append(Pause(args.hold))
    caller = SimulatedCaller(url, script, auth_token=args.auth_token, public_url=args.public_url)
    try:
        report = asyncio.run(caller.run())
    except (OSError, ValueError, WebSocketException) as exc:
        print(f"callbridge call: cannot reach {url}: {exc}")
        return 2
    if report.rejected:
        print(f"call not connected: {report.rejected}")
        return 1
    print_report(report, speech, args.wav or f"--say {args.say!r}", caller.stream_sid)
    if args.out:
        save_wav(args.out, report.heard_audio)
        print(f"wrote {args.out}")
    answered = [reply is not None and report.reply_heard[reply] > 0
                for _, what, reply in report.answers() if what.startswith("turn")]
    return 0 if answered and all(answered) else 1


def print_report(report: CallReport, speech: np.ndarray, source: str, stream_sid: str) -> None:
    first, last = speech_span(speech)
    print(f"sent {(last - first + 1) * TICK:.2f} s of speech in {len(speech) / RATE:.2f} s of audio ({source}); "
          f"stream {stream_sid}")
    print("timeline (seconds from the start of the call):")
    for line in report.timeline():
        print("  " + line)
    silent = False
    for t, what, reply in report.answers():
        heard = report.reply_heard[reply] if reply is not None else 0.0
        if reply is None:
            print(f"{what}: no reply")
        else:
            since = "end of speech" if what.startswith("turn") else "DTMF"
            print(f"{what}: {since} -> first reply audio {(report.reply_starts[reply] - t) * 1000:.0f} ms, "
                  f"heard {heard:.2f} s")
        silent = silent or (what.startswith("turn") and heard == 0)
    if silent:
        print(f"the bot said nothing: check the server's log for 'call {stream_sid}: ...' (bot errors are logged "
              "there at warning; the phone line cannot carry them)")
    print(f"heard {report.reply_seconds:.2f} s of reply audio, stalls {report.stall_seconds * 1000:.0f} ms, "
          f"marks echoed {len(report.marks_echoed)} ({sum(map(ends_reply, report.marks_echoed))} ending a reply), "
          f"clears {len(report.clears)}")
    print(f"socket closed with code {report.close_code} {report.close_reason}".rstrip())
