"""The browser's µ-law WebSocket (`/websocket/offer`), the seed's contract at phone quality.

The client sends `{"event":"start","websocket_id":ID}` first, then `media` events with base64 µ-law
at 8 kHz, `ping` (answered with `pong`) and `stop`. The server sends `media` events and the JSON
client messages on the same socket. Bad input gets an `error` message, then a close with a fitting code.
Playback is not echoed by browsers, so a reply counts as heard when its paced audio has played out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from quart import Blueprint, websocket

from app.call import Call
from app.messages import ClientMessage
from app.registry import RegistryError
from app.transports.media import (
    INVALID_PAYLOAD,
    NORMAL,
    TRY_AGAIN_LATER,
    PacedWriter,
    ProtocolError,
    decode_payload,
    field,
    parse_message,
    run_until_first_done,
)

logger = logging.getLogger("callbridge.browser")

browser_ws = Blueprint("browser_ws", __name__)

RATE = 8000


@browser_ws.websocket("/websocket/offer")
async def offer() -> None:
    from app.server import services

    await websocket.accept()
    await BrowserStream(services()).run()


class BrowserStream:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = state.settings
        self.call_id = ""
        self._timers: set[asyncio.TimerHandle] = set()

    async def run(self) -> None:
        call: Call | None = None
        try:
            call = await self._handshake()
            call.start()
            writer = PacedWriter(
                call, self.settings.outbound_lead_ms / 1000, self._send_media, self._send_clear,
                self._reply_end, self._send_message,
            )
            await run_until_first_done(self._read(call), writer.run())
            await websocket.close(NORMAL)
        except ProtocolError as exc:
            logger.warning("browser socket %s: %s; closing with %d", self.call_id or "-", exc, exc.code)
            await self._send_message(ClientMessage("error", str(exc)))
            await websocket.close(exc.code, str(exc)[:120])
        except RegistryError as exc:
            logger.warning("browser socket %s refused: %s", self.call_id or "-", exc)
            await websocket.send(json.dumps(exc.body()))
            await websocket.close(TRY_AGAIN_LATER, exc.code)
        finally:
            for timer in self._timers:
                timer.cancel()
            if call is not None:
                await self.state.end_call(call)

    async def _receive(self) -> dict[str, Any]:
        return parse_message(await websocket.receive(), self.settings.max_message_bytes)

    async def _handshake(self) -> Call:
        message = await self._receive()
        if message["event"] != "start":
            raise ProtocolError(f"the first message must be start, not {message['event']!r}")
        self.call_id = field(message, "websocket_id")
        if not self.call_id:
            raise ProtocolError("websocket_id must not be empty", INVALID_PAYLOAD)
        return self.state.open_call(self.call_id, "websocket", inbound_rate=RATE, outbound_rate=RATE)

    async def _read(self, call: Call) -> None:
        while True:
            message = await self._receive()
            event = message["event"]
            if event == "media":
                call.push_audio(decode_payload(field(message, "media", "payload")))
            elif event == "ping":
                await websocket.send('{"event":"pong"}')
            elif event == "stop":
                return
            elif event == "start":
                raise ProtocolError("unexpected 'start' after start")
            else:
                raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    async def _send_media(self, payload: str) -> None:
        await websocket.send(f'{{"event":"media","media":{{"payload":"{payload}"}}}}')

    async def _send_clear(self) -> None:
        """Barge-in: the client drops its playback queue (it also gets the `barge_in` log message)."""
        await websocket.send('{"event":"clear"}')

    async def _reply_end(self, reply_id: str, play_end: float) -> None:
        loop = asyncio.get_running_loop()
        call = self.state.calls.get(self.call_id)
        if call is not None:
            self._timers.add(loop.call_at(play_end, call.playback_finished, reply_id))

    async def _send_message(self, message: ClientMessage) -> None:
        await websocket.send(message.to_json())
