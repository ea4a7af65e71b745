"""One benchmark phone call: callbridge.simulator's Twilio caller, instrumented, and what its recording means.

`LoadCaller` is `callbridge.simulator.SimulatedCaller` (same webhook, `start`, 20 ms real-time media frames, mark
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
- To keep the load generator's own CPU low (it shares the machine with the server it measures):
  - the socket is websockets' sans-I/O `ClientProtocol` on a plain asyncio protocol, not its asyncio client
    (no per-message locks, queues or task switches); it offers no permessage-deflate (so neither side spends
    CPU compressing) and draws masking keys from blocks of `os.urandom` rather than one system call a frame;
  - one `Pacer` per worker process sends every call's due frames from one timer, on a 5 ms grid, and writes
    them together, instead of one sleeping task per call;
  - each phrase is µ-law and base64 encoded once per process; a frame is a byte template filled with its
    call's streamSid, sequence number, chunk and timestamp;
  - received media is kept as µ-law bytes (decoded once, after the call) and the player only keeps counters;
    callbridge's media messages are read without the JSON parser when they match its layout byte for byte.

`analyse` turns a finished call into a `CallResult` of plain numbers that pickles cheaply between processes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import math
import os
import random
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np
import websockets.frames
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import USER_AGENT
from websockets.protocol import OPEN
from websockets.uri import WebSocketURI, parse_uri

from callbridge.codec import ulaw_decode, ulaw_encode
from callbridge.core.messages import ends_reply
from callbridge.simulator import (
    FRAME,
    RATE,
    TICK,
    Pause,
    SimulatedCaller,
    Speak,
    Step,
    WaitForReply,
    speech_frames,
    start_message,
    stop_message,
    webhook,
)

GAP_SECONDS = 0.3
OPEN_TIMEOUT = 10.0  # seconds for TCP connect + WebSocket handshake (as websockets' connect(open_timeout=10))
CLOSE_TIMEOUT = 10.0  # seconds to wait for the server to close TCP after the closing handshake (websockets' default)
PACE_GRID = 0.005  # seconds: the pacer's timer grid (see Pacer)
PACE_SLACK = 0.001  # seconds: a timer may fire up to a millisecond early (the event loop counts in ms)
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


class _MaskKeys:
    """Masking keys for websockets' frame serialiser, taken 4 bytes at a time from 4 KiB blocks of `os.urandom`.

    websockets asks `secrets.token_bytes(4)` for every frame it sends: a getrandom system call per call every
    20 ms, which measured about 10 µs a frame here (a third of the Python of a tick). Keys from the same CSPRNG
    in blocks are just as unpredictable (RFC 6455 5.3); the frames are still serialised and masked by
    websockets. A forked child draws a fresh block."""

    def __init__(self) -> None:
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._discard)

    def _discard(self) -> None:
        self._block, self._at = b"", 0

    def token_bytes(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._block):
            self._block, at = os.urandom(4096), 0
        self._at = at + n
        return self._block[at : at + n]

    @classmethod
    def install(cls) -> None:
        """Point websockets' frame serialiser at a block source (once per process)."""
        if not isinstance(websockets.frames.secrets, cls):
            websockets.frames.secrets = cls()  # type: ignore[assignment]


class _Socket(asyncio.Protocol):
    """One call's WebSocket: websockets' sans-I/O `ClientProtocol` on a plain asyncio transport.

    websockets' asyncio client costs tens of microseconds per message (locks, context managers, a queue and a
    task switch per received message); here a send is a frame serialisation (masked, by websockets) and one
    `transport.write`, and every received message goes straight to the caller from `data_received`."""

    def __init__(self, caller: LoadCaller, uri: WebSocketURI) -> None:
        _MaskKeys.install()
        self.caller = caller
        self.protocol = ClientProtocol(uri, max_size=None)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._fragments: list[bytes] = []
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.protocol.state is OPEN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        request = self.protocol.connect()
        request.headers.setdefault("User-Agent", USER_AGENT)
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        t = self.caller.now()
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        writes = protocol.data_to_send()
        if writes or protocol.state is not OPEN:  # pongs, the closing handshake
            self._write(writes)
        for event in events:
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                    if not event.fin:
                        self._fragments.append(event.data)
                    elif self._fragments:
                        self._fragments.append(event.data)
                        self.caller._on_message(t, b"".join(self._fragments))
                        self._fragments.clear()
                    else:
                        self.caller._on_message(t, event.data)
            elif not self.opened.done():  # the handshake's response
                if protocol.handshake_exc is not None:
                    self.opened.set_exception(protocol.handshake_exc)
                else:
                    self.opened.set_result(None)

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: moves the state to CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.opened.done():
            lost = self.protocol.handshake_exc or ConnectionError("connection lost during the handshake")
            self.opened.set_exception(lost)
        if not self.closed.done():
            self.closed.set_result(None)

    #: While the pacer runs its batch, the frames to write, written together at the end (see Pacer._run).
    batch: list[tuple[asyncio.Transport, bytes]] | None = None

    def send(self, message: bytes, at_once: bool = False) -> None:
        """One text message (already UTF-8), if the connection is still open: into the pacer's batch if one is
        being collected, unless `at_once`."""
        protocol = self.protocol
        if protocol.state is OPEN:
            protocol.send_text(message)
            transport = cast(asyncio.Transport, self.transport)  # open implies connected
            batch = None if at_once else _Socket.batch
            for data in protocol.data_to_send():
                if batch is None:
                    transport.write(data)
                else:
                    batch.append((transport, data))

    def close(self) -> None:
        """Start the closing handshake; the server closes TCP, or the transport is closed after a timeout."""
        if self.protocol.state is OPEN:
            self.protocol.send_close()
            self._flush()

    def abort(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.transport.abort()

    def _flush(self) -> None:
        self._write(self.protocol.data_to_send())

    def _write(self, writes: list[bytes]) -> None:
        transport = self.transport
        assert transport is not None
        for data in writes:
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self._close_timer is None and self.protocol.close_expected():
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)


class Pacer:
    """One timer per event loop sends every call's due media frame, instead of one sleeping task per call.

    Waking the worker process up costs far more CPU on this machine than sending a frame (tens of
    microseconds, over a hundred when the CPU had gone idle), so the timer runs on a grid of `grid` seconds
    and each wake-up ticks every call that has fallen due, then writes all their frames. The grid divides
    20 ms, so a call keeps one slot of it: its frames stay exactly 20 ms apart, at most `grid` after its own
    schedule. Calls that start at different times take different slots (`grid` = 5 ms: 4 slots, and each
    worker process has its own random offset), so the server still gets frames spread over the 20 ms rather
    than in one burst per worker (which once made callbridge use 17% less CPU for the same calls; with 4
    slots its CPU matched that under the one-task-per-call generator). With `grid` = 1 ms calls are paced
    exactly as one sleeping task per call was (the event loop's timers count whole milliseconds). The
    timer's oversleep is recorded as the event loop's lag."""

    _current: Pacer | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop, grid: float = PACE_GRID) -> None:
        if not 0 < grid <= TICK or abs(TICK / grid - round(TICK / grid)) > 1e-9:
            raise ValueError(f"the pacing grid must divide {TICK * 1000:.0f} ms, not {grid * 1000:g} ms")
        self.loop = loop
        self.grid = grid
        self.lags: list[float] = []  # how late the timer fired, per wake-up
        self._due: list[tuple[float, int, LoadCaller]] = []  # heap of (due time, tie-breaker, call)
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._offset = random.uniform(0.0, grid)  # worker processes share the clock: each its own grid

    @classmethod
    def running(cls, grid: float = PACE_GRID) -> Pacer:
        """The pacer of the running event loop (made with `grid` by its first caller)."""
        loop = asyncio.get_running_loop()
        if cls._current is None or cls._current.loop is not loop:
            cls._current = cls(loop, grid)
        return cls._current

    def add(self, caller: LoadCaller) -> None:
        """Start sending `caller`'s frames: the first one at once (as the base simulator does), then one every
        20 ms."""
        self._order += 1
        due = self.loop.time()
        if self._tick(caller, due, due):
            heapq.heappush(self._due, (due + TICK, self._order, caller))
            self._arm()

    def _arm(self) -> None:
        if not self._due:
            return
        grid = self.grid
        at = math.ceil((self._due[0][0] - self._offset) / grid - 1e-9) * grid + self._offset
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._run)

    def _run(self) -> None:
        """Every due call's tick, then all their writes: the Python runs back to back, then the kernel's TCP
        work (each write delivers a frame to the server over loopback) runs back to back too."""
        now = self.loop.time()
        self.lags.append(now - self._timer_at)
        self._timer, self._timer_at = None, math.inf
        due = self._due
        horizon = now + PACE_SLACK
        batch: list[tuple[asyncio.Transport, bytes]] = []
        _Socket.batch = batch
        try:
            while due and due[0][0] <= horizon:
                when, order, caller = due[0]
                if self._tick(caller, when, now):
                    heapq.heapreplace(due, (when + TICK, order, caller))
                else:
                    heapq.heappop(due)
        finally:
            _Socket.batch = None
            for transport, data in batch:
                if not transport.is_closing():
                    transport.write(data)
            self._arm()

    @staticmethod
    def _tick(caller: LoadCaller, due: float, now: float) -> bool:
        try:
            return caller._tick(due, now)
        except Exception as exc:  # one call's error ends that call's script, as it would end its own task
            caller._end_script(exc)
            return False


class LoadCaller(SimulatedCaller):
    def __init__(self, base_url: str, script: list[Step], reply_end: ReplyEnd, pace: float = PACE_GRID) -> None:
        super().__init__(base_url, script)
        self.reply_end = reply_end
        self.pace = pace  # the pacer's grid, seconds
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
        self._socket: _Socket | None = None
        self._frame_iter: Iterator[tuple[bytes, str]] = iter(())
        self._next: tuple[bytes, str] | None = None  # the next media frame: (end of its message, marker)
        self._prefix = b""
        self._chunk = 0
        self._script_done: asyncio.Future[None] | None = None
        self._pacing = False  # in the pacer: the script is being sent
        self._media_head = b"\0"  # how the server's media messages start, when laid out as callbridge does
        self._receive_error: Exception | None = None

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
        uri = parse_uri(self.base_url.replace("http://", "ws://") + urllib.parse.urlsplit(stream_url).path)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self._media_head = f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"payload":"'.encode()
        loop = asyncio.get_running_loop()
        socket = _Socket(self, uri)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await loop.create_connection(lambda: socket, uri.host, uri.port)
                await socket.opened
            self._socket = socket
            self.connected_at = self.now()
            socket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).encode())
            socket.send(start_message(self.stream_sid, call_sid, params).encode())
            await self._send_script()
            if not socket.open:
                await socket.closed
                self.failure = (f"socket closed by the server mid-call "
                                f"({socket.protocol.close_code} {socket.protocol.close_reason})")
            else:
                socket.send(stop_message(self.stream_sid, call_sid).encode())
                with contextlib.suppress(TimeoutError):  # the server did not close after `stop`: not our concern
                    await asyncio.wait_for(asyncio.shield(socket.closed), 5)
            if self._receive_error is not None:
                raise self._receive_error
            self.report.close_code = socket.protocol.close_code
            if not socket.closed.done():  # as leaving websockets' `async with connect()`: close, wait, give up
                socket.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(socket.closed), CLOSE_TIMEOUT)
        finally:
            self._socket, self._pacing = None, False  # the pacer drops the call at its next tick
            if self._script_done is not None and not self._script_done.done():
                self._script_done.cancel()
            socket.abort()

    def _on_message(self, t: float, raw: bytes) -> None:
        """Twilio's side of the socket: each message to its handler (as the base simulator's receive loop), with
        the time its chunk arrived."""
        if self._receive_error is not None:
            return
        try:
            head = self._media_head  # callbridge's own layout, byte for byte: no JSON parser needed
            if raw.startswith(head) and raw.endswith(b'"}}') and raw.find(b'"', len(head)) == len(raw) - 3:
                self._on_media(t, binascii.a2b_base64(raw[len(head) : -3]))
                return
            if self._dispatch(t, raw):
                self._echo_marks()
        except Exception as exc:  # the base simulator's receive task would have died with it
            self._receive_error = exc

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
        if ends_reply(name):  # not the marks inside a reply (a bot's Mark, a resume point)
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
        t = self.now()
        if self.reply_end == "gap" and self._reply_open and t - self._last_arrival >= GAP_SECONDS:
            self._close_reply()
        position = self._played_total
        played = min(FRAME, self._buffered)
        need = FRAME - played
        self._buffered -= played
        self._played_total += played
        if played:
            self.played.append((t, position, played))
            self.report.reply_seconds += played / RATE
            if self._pending_stall:
                self.report.stall_seconds += self._pending_stall / RATE
                self._pending_stall = 0
        if need and self._reply_open:
            self._pending_stall += need

    def _echo_marks(self) -> None:  # type: ignore[override]  # synchronous: a send is a transport write
        socket = self._socket
        while self._pending_marks and self._pending_marks[0][0] <= self._played_total:
            _, name = self._pending_marks.popleft()
            self.report.marks_echoed.append(name)
            self.report.log(self.now(), "mark_echo", name)
            if socket is not None:
                echo = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
                socket.send(json.dumps(echo).encode())

    #: `_frames` yields each frame as the end of its `media` message, encoded once per phrase and process.
    _silence_frame = ('","payload":"' + base64.b64encode(ulaw_encode(np.zeros(FRAME, np.int16))).decode()
                      + '"}}').encode()

    def _speech_frames(self, step: Speak) -> list[bytes]:  # type: ignore[override]
        return _speech_tails(step.samples)

    async def _send_script(self) -> None:
        """Hands the script to the pacer, which sends a frame every 20 ms; returns when the script is over."""
        self._script_done = asyncio.get_running_loop().create_future()
        self._prefix = f'{{"event":"media","streamSid":"{self.stream_sid}","sequenceNumber":"'.encode()
        self._frame_iter = ((tail, marker) for tail, _, marker in self._frames())
        self._next = next(self._frame_iter, None)
        if self._next is None or self._socket is None:
            return
        self._pacing = True
        Pacer.running(self.pace).add(self)
        await self._script_done

    def _tick(self, due: float, now: float) -> bool:
        """One 20 ms tick of the call (from the pacer): the media frame, the player, the mark echoes; then the
        next frame is taken (so WaitForReply sees the state right after this tick, as in the base simulator).
        Returns whether the call has more frames."""
        socket = self._socket
        if socket is None or not self._pacing:
            return False
        upcoming = self._next
        if upcoming is None or socket.protocol.state is not OPEN:
            self._end_script()
            return False
        if now - due > TICK:
            self.late_ticks += 1
            self.max_lateness = max(self.max_lateness, now - due)
        tail, marker = upcoming
        self._chunk = chunk = self._chunk + 1
        message = (b'%s%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d%s'
                   % (self._prefix, chunk + 1, chunk, chunk * 20, tail))
        if marker:  # a Speak's first or last frame: its time is measured, so it is written at once
            if marker == "first" or marker == "only":
                self.report.speech_starts.append(self.now() - TICK)  # a frame carries the 20 ms captured before it
            socket.send(message, at_once=True)
            if marker == "last" or marker == "only":
                self.report.speech_ends.append(self.now())
                self.positions_at_speech_end.append(self._received_total)
        else:
            socket.send(message)
        if self._buffered or self._reply_open:
            self._play_frame()
        if self._pending_marks:
            self._echo_marks()
        self._next = next(self._frame_iter, None)
        if self._next is None:
            self._end_script()
            return False
        return True

    def _end_script(self, error: Exception | None = None) -> None:
        """The script is over, the socket closed, or a tick failed (`error`, raised by `_send_script`)."""
        self._pacing = False
        done = self._script_done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


_speech_cache: dict[int, tuple[np.ndarray, list[bytes]]] = {}


def _speech_tails(samples: np.ndarray) -> list[bytes]:
    """A phrase's frames as `","payload":"…"}}` tails, as `speech_frames` cuts them;
    computed once per phrase (every call says the same phrases) instead of once per frame per call."""
    cached = _speech_cache.get(id(samples))
    if cached is not None and cached[0] is samples:
        return cached[1]
    tails = [('","payload":"' + base64.b64encode(ulaw_encode(frame)).decode() + '"}}').encode()
             for frame in speech_frames(samples)]
    _speech_cache[id(samples)] = (samples, tails)
    return tails


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
