"""One benchmark phone call: app.simulator's Twilio caller, instrumented, and what its recording means.

`LoadCaller` is `app.simulator.SimulatedCaller` (same webhook, `start`, 20 ms real-time media frames, mark
echoes, buffer emptied on `clear`) with what a load run needs on top:

- It never raises: a refused webhook, a failed connection or a dropped socket end up in `failure`.
- It records the timeline to analyse after the call: every media arrival, every 20 ms tick the player
  played (with the stream position it played from), and the stream position at each turn's end.
- Two ways to tell where a reply ends. callbridge marks the end of every reply (`reply_end="mark"`), as the
  base simulator expects. FastRTC sends neither `mark` nor `clear`, and sends a whole reply as one message;
  with `reply_end="gap"` a reply is over once nothing has arrived for `GAP_SECONDS`, and media arriving after
  such a gap starts a new reply even while the player still plays the previous one.
- A stall is counted only if the reply goes on afterwards: an empty player between the last audio of a
  reply and the signal that it ended is not a stall (the base simulator counts that gap for FastRTC).
- To keep the load generator's own CPU low, the player keeps counters and the received µ-law bytes instead of
  decoded frames (audio is decoded once, after the call), outgoing messages are formatted without
  `json.dumps`, and the socket offers no permessage-deflate (so neither server spends CPU compressing).

`analyse` turns a finished call into a `CallResult` of plain numbers that pickles cheaply between processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.simulator import (
    FRAME,
    RATE,
    TICK,
    Pause,
    SimulatedCaller,
    Speak,
    Step,
    WaitForReply,
    start_message,
    stop_message,
    webhook,
)
from codec import ulaw_decode, ulaw_encode

GAP_SECONDS = 0.3
ReplyEnd = Literal["mark", "gap"]


@dataclass(frozen=True)
class Phrases:
    """The caller's lines (int16, 8 kHz). The story is said in two parts with a short hesitation between."""

    hello: np.ndarray
    story_a: np.ndarray
    story_b: np.ndarray
    interrupt: np.ndarray
    story_gap: float = 0.3

    @property
    def story(self) -> np.ndarray:
        gap = np.zeros(round(self.story_gap * RATE), np.int16)
        return np.concatenate([self.story_a, gap, self.story_b])


#: The turns of a call as indexes of the script's Speak steps: (first, last).
TURNS = ((0, 0), (1, 2), (3, 3))
TURN_NAMES = ("hello", "story", "interrupt")
BARGE_IN_TURN = 2


def make_script(phrases: Phrases, lead_in: float, *, barge_in_after: float = 1.0, timeout: float = 10.0) -> list[Step]:
    """Hello (reply heard in full); the story with a hesitation; barge in `barge_in_after` into its reply."""
    return [
        Pause(lead_in),
        Speak(phrases.hello), WaitForReply("heard", timeout),
        Pause(0.5),
        Speak(phrases.story_a), Pause(phrases.story_gap), Speak(phrases.story_b), WaitForReply("start", timeout),
        Pause(barge_in_after),
        Speak(phrases.interrupt), WaitForReply("heard", timeout),
    ]


class LoadCaller(SimulatedCaller):
    def __init__(self, base_url: str, script: list[Step], reply_end: ReplyEnd) -> None:
        super().__init__(base_url, script)
        self.reply_end = reply_end
        self.failure = ""
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.received = bytearray()  # every µ-law byte received, in order: stream position = index
        self.played: list[tuple[float, int, int]] = []  # (tick time, stream position, samples) when audio played
        self.reply_positions: list[int] = []  # stream position where each reply starts
        self.positions_at_speech_end: list[int] = []  # samples received when each Speak ended
        self.other_messages = 0
        self.late_ticks = 0  # media frames sent more than one tick late
        self.max_lateness = 0.0
        self._last_arrival = -1.0
        self._pending_stall = 0

    async def run(self) -> Any:
        self._t0 = time.monotonic()
        try:
            await self._call()
        except Exception as exc:  # the load run records every kind of failure and carries on
            if not self.failure:
                self.failure = f"{type(exc).__name__}: {exc}"[:200]
        self.ended_at = self.now()
        return self.report

    async def _call(self) -> None:
        try:
            stream_url, params = await asyncio.to_thread(webhook, self.base_url)
        except RuntimeError as exc:
            self.failure = f"webhook: {exc}"[:200]
            return
        call_sid = params.pop("CallSid")
        ws_url = self.base_url.replace("http://", "ws://") + urllib.parse.urlsplit(stream_url).path
        self.stream_sid = "MZ" + secrets.token_hex(16)
        async with connect(ws_url, max_size=None, open_timeout=10, compression=None, ping_interval=None) as ws:
            self.ws = ws
            self.connected_at = self.now()
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(start_message(self.stream_sid, call_sid, params))
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._send_script(ws)
                await ws.send(stop_message(self.stream_sid, call_sid))
                await asyncio.wait_for(asyncio.shield(receiver), 5)
            except ConnectionClosed:
                self.failure = f"socket closed by the server mid-call ({ws.close_code} {ws.close_reason})"
            except TimeoutError:
                pass  # the server did not close after `stop`: not the caller's concern
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
            self.report.close_code = ws.close_code

    def _on_media(self, t: float, ulaw: bytes) -> None:
        if self.reply_end == "gap" and t - self._last_arrival >= GAP_SECONDS:
            self._close_reply()
        if not self._reply_open:
            self._reply_open = True
            self.report.reply_starts.append(t)
            self.reply_positions.append(self._received_total)
        self._last_arrival = t
        self.received += ulaw
        self._buffered += len(ulaw)
        self._received_total += len(ulaw)
        self.report.received_samples += len(ulaw)

    def _on_mark(self, name: str) -> None:
        self.report.marks_received.append(name)
        self._pending_marks.append((self._received_total, name))
        self._close_reply()

    def _on_clear(self, t: float) -> None:
        self.report.clears.append(t)
        self._buffered = 0
        self._played_total = self._received_total
        self._close_reply()

    def _on_other(self, t: float, raw: str | bytes) -> None:
        self.other_messages += 1

    def _close_reply(self) -> None:
        self._reply_open = False
        self._pending_stall = 0

    def _play_frame(self) -> None:
        """20 ms of the player; an empty player counts as a stall once the same reply plays on."""
        if self.reply_end == "gap" and self._reply_open and self.now() - self._last_arrival >= GAP_SECONDS:
            self._close_reply()
        position = self._played_total
        played = min(FRAME, self._buffered)
        need = FRAME - played
        self._buffered -= played
        self._played_total += played
        if played:
            self.played.append((self.now(), position, played))
            self.report.reply_seconds += played / RATE
            if self._pending_stall:
                self.report.stall_seconds += self._pending_stall / RATE
                self._pending_stall = 0
        if need and self._reply_open:
            self._pending_stall += need

    async def _send_script(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        silence = base64.b64encode(ulaw_encode(np.zeros(FRAME, np.int16))).decode()
        prefix = f'{{"event":"media","streamSid":"{self.stream_sid}","sequenceNumber":"'
        next_tick = loop.time()
        for chunk, (frame, step, marker) in enumerate(self._frames(), start=1):
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > TICK:
                self.late_ticks += 1
                self.max_lateness = max(self.max_lateness, -delay)
            next_tick += TICK
            t = self.now()
            if marker in ("first", "only"):
                self.report.speech_starts.append(t - TICK)  # a frame carries the 20 ms captured before it
            payload = base64.b64encode(ulaw_encode(frame)).decode() if isinstance(step, Speak) else silence
            await ws.send(f'{prefix}{chunk + 1}","media":{{"track":"inbound","chunk":"{chunk}",'
                          f'"timestamp":"{chunk * 20}","payload":"{payload}"}}}}')
            if marker in ("last", "only"):
                self.report.speech_ends.append(self.now())
                self.positions_at_speech_end.append(self._received_total)
            self._play_frame()
            await self._echo_marks(ws)


@dataclass
class CallResult:
    """What one call measured. Times in seconds; None where the call never got that far."""

    index: int
    failure: str = ""
    call_seconds: float = 0.0
    turn_latency: list[float | None] = field(default_factory=list)  # per turn: end of speech -> first reply audio
    fidelity: list[float | None] = field(default_factory=list)  # per turn: echo_fidelity of its reply, as heard
    split_replies: int = 0  # replies that started while the caller was still saying a turn
    clear_latency: float | None = None  # barge-in: speech onset -> `clear`
    old_reply_after_onset: float | None = None  # barge-in: how long the interrupted reply kept playing
    stall_seconds: float = 0.0
    reply_seconds: float = 0.0
    other_messages: int = 0
    late_ticks: int = 0
    max_lateness: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse(caller: LoadCaller, phrases: Phrases, index: int, expects_clear: bool) -> CallResult:
    report = caller.report
    result = CallResult(index=index, failure=caller.failure, stall_seconds=report.stall_seconds,
                        reply_seconds=report.reply_seconds, other_messages=caller.other_messages,
                        late_ticks=caller.late_ticks, max_lateness=caller.max_lateness)
    if caller.connected_at is not None and caller.ended_at is not None:
        result.call_seconds = caller.ended_at - caller.connected_at
    starts, ends, replies = report.speech_starts, report.speech_ends, report.reply_starts
    said = (phrases.hello, phrases.story, phrases.interrupt)
    for turn, (first, last) in enumerate(TURNS):
        if last >= len(ends):
            result.turn_latency.append(None)
            result.fidelity.append(None)
            continue
        onset, end = starts[first], ends[last]
        next_onset = starts[TURNS[turn + 1][0]] if turn + 1 < len(TURNS) and TURNS[turn + 1][0] < len(starts) else None
        result.split_replies += sum(1 for r in replies if onset < r < end)
        reply = next((k for k, r in enumerate(replies) if r >= end and (next_onset is None or r < next_onset)), None)
        if reply is None:
            result.turn_latency.append(None)
            result.fidelity.append(None)
            continue
        result.turn_latency.append(replies[reply] - end)
        stop = caller.reply_positions[reply + 1] if reply + 1 < len(replies) else None
        heard = heard_between(caller, caller.reply_positions[reply], stop)
        result.fidelity.append(echo_fidelity(heard, said[turn]))
    barge_in_speak = TURNS[BARGE_IN_TURN][0]
    if barge_in_speak < len(starts) and result.turn_latency[BARGE_IN_TURN - 1] is not None:
        onset = starts[barge_in_speak]
        clears = [c for c in report.clears if c >= onset]
        result.clear_latency = clears[0] - onset if clears else None
        result.old_reply_after_onset = old_audio_after(caller, onset, caller.positions_at_speech_end[barge_in_speak])
    if not result.failure:
        result.failure = judge(result, expects_clear)
    return result


def judge(result: CallResult, expects_clear: bool) -> str:
    missing = [TURN_NAMES[k] for k, latency in enumerate(result.turn_latency) if latency is None]
    if missing:
        return "no reply to " + ", ".join(missing)
    if expects_clear and result.clear_latency is None:
        return "no clear on barge-in"
    return ""


def heard_between(caller: LoadCaller, start: int, stop: int | None) -> np.ndarray:
    """The audio the player played from stream positions [start, stop), decoded."""
    pieces = [caller.received[position : position + samples] for _, position, samples in caller.played
              if position >= start and (stop is None or position < stop)]
    return ulaw_decode(b"".join(pieces))


def old_audio_after(caller: LoadCaller, onset: float, old_until: int) -> float:
    """Seconds the caller kept hearing audio that arrived before the barge-in turn ended, after its onset."""
    last_end = onset
    for t, position, samples in caller.played:
        if position < old_until:
            last_end = max(last_end, t + samples / RATE)
    return last_end - onset


def echo_fidelity(heard: np.ndarray, said: np.ndarray, segment: float = 0.5) -> float:
    """How faithfully `heard` repeats `said`: each 0.5 s piece's peak correlation inside `said`, energy-weighted.

    One peak correlation over the whole reply would halve the score of an echo with a single inaudible skip
    of a few samples (FastRTC drops ~3 ms at a pause), so the pieces are aligned on their own. Silent pieces
    do not count; a reply with no sound at all scores 0."""
    heard = trim_silence(heard)
    size = round(segment * RATE)
    scores, weights = [], []
    for start in range(0, len(heard), size):
        piece = heard[start : start + size]
        energy = float(np.sum(piece.astype(np.float64) ** 2))
        if len(piece) < size // 2 or energy < len(piece) * 100.0**2:
            continue
        scores.append(peak_correlation(piece, said))
        weights.append(energy)
    return float(np.average(scores, weights=weights)) if scores else 0.0


def trim_silence(audio: np.ndarray, level: int = 100) -> np.ndarray:
    """`audio` without the near-silence at both ends."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > level)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]


def peak_correlation(reply: np.ndarray, said: np.ndarray) -> float:
    """Peak normalised cross-correlation at the best alignment (1.0: the same waveform), via FFT.

    Same measure as tests.speech.peak_correlation, which is O(n·m) and too slow for hundreds of calls."""
    a = np.asarray(reply, dtype=np.float64)
    b = np.asarray(said, dtype=np.float64)
    if len(a) < len(b):
        a, b = b, a
    n = len(a) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b[::-1], size), size)[len(b) - 1 : len(a)]
    power = np.concatenate([[0.0], np.cumsum(a * a)])
    window = np.sqrt(np.maximum(power[len(b):] - power[: len(a) - len(b) + 1], 0.0)) * np.linalg.norm(b)
    return float(np.max(np.abs(corr) / (window + 1e-9)))
