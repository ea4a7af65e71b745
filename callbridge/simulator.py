"""A simulated Twilio caller: plays audio into /telephone/handler in real time, as Twilio would.

It starts the call through the webhook (`POST /telephone/incoming`, signed when an auth token is
given), connects to the Stream URL from the TwiML with its `<Parameter>`s, then every 20 ms sends one
`media` frame of the caller's script and plays one frame of the bot's audio. Like Twilio's player it
echoes a `mark` once the audio sent before it has played, and on `clear` drops what it buffered and
echoes the pending marks at once. It records what the caller heard and when things happened.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callbridge.codec import FRAME_MS, ulaw_decode, ulaw_encode

RATE = 8000
FRAME = RATE * FRAME_MS // 1000
TICK = FRAME / RATE


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
class Dtmf:
    digits: str


Step = Speak | Pause | WaitForReply | Dtmf


@dataclass
class CallReport:
    events: list[tuple[float, str, str]] = field(default_factory=list)
    speech_ends: list[float] = field(default_factory=list)  # when each Speak's last sample was sent
    speech_starts: list[float] = field(default_factory=list)  # when each Speak's first sample was captured
    reply_starts: list[float] = field(default_factory=list)  # first media of each reply received
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


def webhook(base_url: str, auth_token: str = "", public_url: str = "", **form: str) -> tuple[str, dict[str, str]]:
    """POST the incoming-call webhook as Twilio does; returns the Stream URL and its parameters.

    Raises RuntimeError with the server's answer if the call was rejected or refused."""
    url = base_url.rstrip("/") + "/telephone/incoming"
    params = {"CallSid": "CA" + secrets.token_hex(16), "AccountSid": "AC" + secrets.token_hex(16),
              "From": "+15550100001", "To": "+15550100002", "Direction": "inbound", **form}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        signed_url = (public_url.rstrip("/") or base_url.rstrip("/")) + "/telephone/incoming"
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(signed_url, params)
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            twiml = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"webhook answered {exc.code}: {exc.read().decode(errors='replace')}") from None
    root = ET.fromstring(twiml)
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


def speech_frames(samples: np.ndarray) -> list[np.ndarray]:
    """A phrase as 20 ms frames of int16, the last padded with silence."""
    audio = np.asarray(samples, dtype=np.int16)
    count = max(1, -(-len(audio) // FRAME))
    padded = np.zeros(count * FRAME, np.int16)
    padded[: len(audio)] = audio
    return [padded[i * FRAME : (i + 1) * FRAME] for i in range(count)]


class SimulatedCaller:
    def __init__(self, base_url: str, script: list[Step], *, auth_token: str = "", public_url: str = "",
                 hangup_when_done: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.script = script
        self.auth_token = auth_token
        self.public_url = public_url
        self.hangup_when_done = hangup_when_done
        self.report = CallReport()
        self._buffer: deque[np.ndarray] = deque()
        self._buffered = 0
        self._received_total = 0
        self._played_total = 0
        self._pending_marks: deque[tuple[int, str]] = deque()
        self._reply_open = False  # media arrived since the last mark
        self._t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def run(self) -> CallReport:
        self._t0 = time.monotonic()
        try:
            stream_url, params = await asyncio.to_thread(
                webhook, self.base_url, self.auth_token, self.public_url
            )
        except RuntimeError as exc:
            self.report.rejected = str(exc)
            return self.report
        call_sid = params.pop("CallSid")
        path = urllib.parse.urlsplit(stream_url).path
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + path
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(stream_url, {})
        stream_sid = "MZ" + secrets.token_hex(16)
        async with connect(ws_url, additional_headers=headers, max_size=None, open_timeout=10) as ws:
            self.ws = ws
            self.stream_sid = stream_sid
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(start_message(stream_sid, call_sid, params))
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._send_script(ws)
                if self.hangup_when_done:
                    await ws.send(stop_message(stream_sid, call_sid))
                    self.report.log(self.now(), "stop")
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
        return self.report

    async def _receive(self, ws) -> None:
        """Twilio's side of the socket: each message to its handler, until the server closes."""
        try:
            async for raw in ws:
                if self._dispatch(self.now(), raw):
                    await self._echo_marks(ws)
        except ConnectionClosed:
            pass

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
            self.report.log(t, "reply_start")
        self._buffer.append(samples)
        self._buffered += len(samples)
        self.report.max_buffered_seconds = max(self.report.max_buffered_seconds, self._buffered / RATE)
        self._received_total += len(samples)
        self.report.received_samples += len(samples)

    def _on_mark(self, name: str) -> None:
        """The mark is echoed once the audio received before it has played."""
        self.report.marks_received.append(name)
        self._pending_marks.append((self._received_total, name))
        self._reply_open = False

    def _on_clear(self, t: float) -> None:
        """Drop what is buffered; the pending marks are echoed at once."""
        self.report.clears.append(t)
        self.report.log(t, "clear")
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
            await ws.send(json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}))

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
        self._played_total += played
        if played:
            self.report.heard.append(np.concatenate(out))
            self.report.reply_seconds += played / RATE
        if need and self._reply_open:
            self.report.stall_seconds += need / RATE

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
                frames = self._speech_frames(step)
                count = len(frames)
                for i, frame in enumerate(frames):
                    marker = "first" if i == 0 else ("last" if i == count - 1 else "")
                    if count == 1:
                        marker = "only"
                    yield frame, step, marker
            elif isinstance(step, Pause):
                for _ in range(round(step.seconds / TICK)):
                    yield silence, step, ""
            elif isinstance(step, Dtmf):
                yield silence, step, "dtmf"
            else:
                replies_before = len(self.report.reply_starts)
                for _ in range(round(step.timeout / TICK)):
                    if step.until == "start" and len(self.report.reply_starts) > replies_before:
                        break
                    if (step.until == "heard" and len(self.report.reply_starts) > replies_before
                            and not self._reply_open and not self._pending_marks and not self._buffered):
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
            payload = base64.b64encode(ulaw_encode(frame)).decode()
            await ws.send(json.dumps({
                "event": "media", "sequenceNumber": str(chunk + 1), "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20), "payload": payload},
            }))
            if marker in ("last", "only"):
                self.report.speech_ends.append(self.now())
            if marker == "dtmf" and isinstance(step, Dtmf):
                for digit in step.digits:
                    await ws.send(json.dumps({"event": "dtmf", "streamSid": self.stream_sid,
                                              "dtmf": {"track": "inbound_track", "digit": digit}}))
            self._play_frame()
            await self._echo_marks(ws)


def load_wav(path: str) -> np.ndarray:
    """A mono 16-bit WAV as int16 at 8 kHz."""
    import wave

    from callbridge.codec import resample

    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            samples = samples.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        rate = w.getframerate()
    return resample(samples, rate, RATE) if rate != RATE else samples.copy()


def save_wav(path: str, samples: np.ndarray) -> None:
    import wave

    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def main(args) -> int:
    """`python -m callbridge call WAV ...`: one simulated phone call, with a printed timeline."""
    try:
        speech = load_wav(args.wav)
    except (OSError, ValueError, EOFError) as exc:
        print(f"callbridge call: cannot read {args.wav}: {exc}")
        return 2
    script: list[Step] = [Pause(0.3), Speak(speech)]
    if args.dtmf:
        script.append(Dtmf(args.dtmf))
    script.append(WaitForReply("heard", timeout=args.wait))
    caller = SimulatedCaller(args.url, script, auth_token=args.auth_token, public_url=args.public_url)
    try:
        report = asyncio.run(caller.run())
    except OSError as exc:
        print(f"callbridge call: cannot reach {args.url}: {exc}")
        return 2
    if report.rejected:
        print(f"call not connected: {report.rejected}")
        return 1
    print(f"sent {len(speech) / RATE:.2f} s of speech ({args.wav})")
    for t, kind, detail in report.events:
        print(f"  {t:7.3f} s  {kind} {detail}")
    for n, latency in enumerate(report.turn_latencies(), start=1):
        print(f"reply {n}: end of speech -> first reply audio {latency * 1000:.0f} ms")
    print(f"heard {report.reply_seconds:.2f} s of reply audio, stalls {report.stall_seconds * 1000:.0f} ms, "
          f"marks echoed {len(report.marks_echoed)}, clears {len(report.clears)}")
    print(f"socket closed with code {report.close_code} {report.close_reason}".rstrip())
    if args.out:
        save_wav(args.out, report.heard_audio)
        print(f"wrote {args.out}")
    return 0 if report.reply_starts else 1
