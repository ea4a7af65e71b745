"""What the µ-law WebSocket transports (Twilio and the browser's) share.

- `read_message`: one JSON object from the socket, or a `ProtocolError` that says what was wrong and
  which close code fits (1003 binary, 1007 malformed, 1009 too big, 1008 protocol order).
- `decode_payload`: base64 µ-law to int16 PCM.
- `PacedWriter`: drains a Call's outbox onto the socket, paced in real time with a small lead, so a
  barge-in flush leaves almost nothing queued at the far end.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from callbridge.codec import ulaw_decode, ulaw_encode
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, Hangup, ReplyEnd
from callbridge.edge.websocket import ClientGone, WebSocket
from callbridge.sessions.registry import ConnectionAlreadyExists, RegistryError

logger = logging.getLogger("callbridge.transport")

FRAME_SECONDS = 0.02
#: Reply audio goes out in messages of up to this many 20 ms frames: a fifth of the messages (socket writes,
#: timer wake-ups, frames for the client to parse) of one frame each. The caller then holds between the
#: lead and the lead + 80 ms of audio; a barge-in's `clear` empties that buffer, so little more of an
#: interrupted reply is heard. Measured at 160 calls against 2 frames: ~2% less server CPU (small, but free).
FRAMES_PER_MESSAGE = 5

# WebSocket close codes (RFC 6455).
NORMAL = 1000
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """Bad input from the client: close the socket with `code` after saying why."""

    def __init__(self, message: str, code: int = POLICY_VIOLATION) -> None:
        super().__init__(message)
        self.code = code


def parse_message(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not part of this protocol; send JSON text", UNSUPPORTED_DATA)
    if len(raw) > max_bytes:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit", MESSAGE_TOO_BIG)
    try:
        message = orjson.loads(raw)  # a 390-byte media message: 1.8 us, json.loads 5.5 us
    except orjson.JSONDecodeError:
        raise ProtocolError("message is not valid JSON", INVALID_PAYLOAD) from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object", INVALID_PAYLOAD)
    if not isinstance(message.get("event"), str):
        raise ProtocolError('message has no "event" string', INVALID_PAYLOAD)
    return message


def field(message: dict[str, Any], *path: str, kind: type = str) -> Any:
    """message[path...] checked for presence and type; a ProtocolError names what is missing."""
    value: Any = message
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise ProtocolError(f"{message['event']!r} message lacks {'.'.join(path)}", INVALID_PAYLOAD)
        value = value[key]
    if not isinstance(value, kind):
        raise ProtocolError(f"{'.'.join(path)} must be a {kind.__name__}", INVALID_PAYLOAD)
    return value


def decode_payload(payload: str) -> np.ndarray:
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)  # base64.b64decode(validate=True) without its wrapper
    except (binascii.Error, ValueError):
        raise ProtocolError("media payload is not valid base64", INVALID_PAYLOAD) from None
    return ulaw_decode(data)


def encode_payload(samples: np.ndarray) -> str:
    return binascii.b2a_base64(ulaw_encode(samples), newline=False).decode("ascii")


class PacedWriter:
    """Sends a Call's outbound items in order, audio paced to real time plus `lead` seconds.

    `play_end` estimates when the far end will have played everything sent so far. The transport
    supplies how each kind of item goes on the wire: `send_audio(payload)`, `send_clear()`,
    `on_reply_end(reply_id, play_end)`, `send_message(message)`.
    """

    def __init__(
        self,
        call: Call,
        lead: float,
        send_audio: Callable[[str], Awaitable[None]],
        send_clear: Callable[[], Awaitable[None]],
        on_reply_end: Callable[[str, float], Awaitable[None]],
        send_message: Callable[[ClientMessage], Awaitable[None]],
    ) -> None:
        self.call = call
        self.lead = lead
        self.send_audio = send_audio
        self.send_clear = send_clear
        self.on_reply_end = on_reply_end
        self.send_message = send_message
        self.play_end = 0.0

    async def run(self) -> None:
        """Returns when the call asks to hang up; raises if the socket fails."""
        loop = asyncio.get_running_loop()
        outbox = self.call.outbox
        while True:
            item = await self.call.next_outbound()
            if isinstance(item, AudioOut):
                now = loop.time()
                self.play_end = max(self.play_end, now)
                due = self.play_end - self.lead
                if due > now and await outbox.pause_until(due):
                    continue  # a barge-in dropped the reply meanwhile: this audio goes with it, the Flush is next
                frames = [item.samples]
                while len(frames) < FRAMES_PER_MESSAGE and isinstance(outbox.peek(), AudioOut):
                    frames.append(outbox.get_nowait().samples)  # type: ignore[union-attr]
                samples = np.concatenate(frames) if len(frames) > 1 else frames[0]
                await self.send_audio(encode_payload(samples))
                self.play_end += len(samples) / self.call.outbound_rate
            elif isinstance(item, ReplyEnd):
                await self.on_reply_end(item.reply_id, self.play_end)
            elif isinstance(item, Flush):
                self.play_end = loop.time()
                await self.send_clear()
            elif isinstance(item, ClientMessage):
                await self.send_message(item)
            elif isinstance(item, Hangup):
                return


async def run_until_first_done(*coroutines: Awaitable[Any]) -> None:
    """Run the reader and writer of a socket; when either ends (or fails), cancel the other."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


class MediaSocket:
    """One µ-law media socket's life: handshake, then reader and paced writer until stop or hang-up.

    Subclasses say how their protocol opens a call (`handshake`), reads (`read`) and puts each outbound
    item on the wire. Whatever goes wrong, the socket is closed with a fitting code and the call freed.
    """

    name = "socket"

    def __init__(self, state: Any, ws: WebSocket) -> None:
        self.state = state
        self.ws = ws
        self.settings = state.settings
        self.label = "-"
        self.call: Call | None = None

    async def handshake(self) -> Call:
        raise NotImplementedError

    async def read(self, call: Call) -> None:
        """Feed media to the call until `stop`; other events go to `on_event`.

        Well-formed media messages are handled as they arrive (`_media_now`), without waking this task: at
        50 messages a second per call that hop was a large part of a call's CPU. Everything else, and
        anything wrong with a media message, comes through `receive` here, in order, and errors are
        reported from here."""
        self.ws.listen(lambda raw: self._media_now(call, raw))
        try:
            while True:
                message = await self.receive()
                event = message["event"]
                if event == "media":
                    call.push_audio(decode_payload(field(message, "media", "payload")))
                elif event == "stop":
                    logger.info("%s %s: stop", self.name, self.label)
                    return
                elif event in ("connected", "start"):
                    raise ProtocolError(f"unexpected {event!r} after start")
                else:
                    await self.on_event(call, event, message)
        finally:
            self.ws.listen(None)

    def _media_now(self, call: Call, raw: str | bytes) -> bool:
        """A valid media message fed to the call at once; False leaves any other message to `read`."""
        try:
            message = parse_message(raw, self.settings.max_message_bytes)
            if message["event"] != "media":
                return False
            pcm = decode_payload(field(message, "media", "payload"))
        except ProtocolError:
            return False
        call.push_audio(pcm)
        return True

    async def on_event(self, call: Call, event: str, message: dict[str, Any]) -> None:
        """A protocol's own events besides media, start and stop; anything unknown is an error."""
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    async def send_media(self, payload: str) -> None:
        raise NotImplementedError

    async def send_clear(self) -> None:
        raise NotImplementedError

    async def reply_end(self, reply_id: str, play_end: float) -> None:
        raise NotImplementedError

    async def send_message(self, message: ClientMessage) -> None:
        raise NotImplementedError

    async def report_error(self, error: ProtocolError) -> None:
        """Tell the client what was wrong, where its protocol has a way to."""

    async def receive(self) -> dict[str, Any]:
        return parse_message(await self.ws.receive(), self.settings.max_message_bytes)

    async def run(self) -> None:
        try:
            self.call = await self.handshake()
            self.call.start()
            writer = PacedWriter(self.call, self.settings.outbound_lead_ms / 1000, self.send_media,
                                 self.send_clear, self.reply_end, self.send_message)
            await run_until_first_done(self.read(self.call), writer.run())
            await self.ws.close(NORMAL)
        except ClientGone:
            logger.info("%s %s: the client closed the socket", self.name, self.label)
        except ProtocolError as exc:
            self.state.metrics.errors.labels("protocol").inc()
            logger.warning("%s %s: %s; closing with %d", self.name, self.label, exc, exc.code,
                           extra={"event": "protocol_error", "call_id": self.label, "error": str(exc),
                                  "code": exc.code})
            await self.report_error(exc)
            await self.ws.close(exc.code, str(exc)[:120])
        except RegistryError as exc:
            logger.warning("%s %s refused: %s", self.name, self.label, exc)
            await self.ws.send(json.dumps(exc.body()))
            code = POLICY_VIOLATION if isinstance(exc, ConnectionAlreadyExists) else TRY_AGAIN_LATER
            await self.ws.close(code, exc.code)
        except Exception:
            self.state.metrics.errors.labels("internal").inc()
            logger.exception("%s %s failed", self.name, self.label,
                             extra={"event": "internal_error", "call_id": self.label})
            with contextlib.suppress(Exception):
                await self.ws.close(INTERNAL_ERROR, "internal error")
        finally:
            if self.call is not None:
                await self.state.end_call(self.call)
