"""The browser's µ-law WebSocket (`/websocket/offer`), the seed's contract at phone quality.

The client sends `{"event":"start","websocket_id":ID}` first, then `media` events with base64 µ-law
at 8 kHz, `ping` (answered with `pong`) and `stop`. The server sends `media` events, `{"event":"clear"}`
on barge-in, and the JSON client messages on the same socket. Bad input gets an `error` message, then a
close with a fitting code. Browsers do not echo playback, so a reply counts as heard when its paced
audio has played out.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from callbridge.core.call import Call
from callbridge.core.messages import ClientMessage
from callbridge.edge.websocket import WebSocket
from callbridge.transports.media import INVALID_PAYLOAD, MediaSocket, ProtocolError, field

logger = logging.getLogger("callbridge.browser")

RATE = 8000


OFFER_PATH = "/websocket/offer"


async def offer(state: Any, ws: WebSocket) -> None:
    """WS /websocket/offer (routed by callbridge.edge.server)."""
    stream = BrowserStream(state, ws)
    try:
        await stream.run()
    finally:
        stream.cancel_timers()


class BrowserStream(MediaSocket):
    name = "browser socket"

    def __init__(self, state: Any, ws: WebSocket) -> None:
        super().__init__(state, ws)
        self._timers: list[asyncio.TimerHandle] = []

    async def handshake(self) -> Call:
        message = await self.receive()
        if message["event"] != "start":
            raise ProtocolError(f"the first message must be start, not {message['event']!r}")
        self.label = field(message, "websocket_id")
        if not self.label:
            raise ProtocolError("websocket_id must not be empty", INVALID_PAYLOAD)
        return await self.state.open_call(self.label, "websocket", inbound_rate=RATE, outbound_rate=RATE)

    async def on_event(self, call: Call, event: str, message: dict[str, Any]) -> None:
        if event != "ping":
            await super().on_event(call, event, message)
        await self.ws.send('{"event":"pong"}')

    async def send_media(self, payload: str) -> None:
        await self.ws.send(f'{{"event":"media","media":{{"payload":"{payload}"}}}}')

    async def send_clear(self) -> None:
        await self.ws.send('{"event":"clear"}')

    async def reply_end(self, reply_id: str, play_end: float) -> None:
        if self.call is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_at(play_end, self.call.playback_finished, reply_id))

    async def send_message(self, message: ClientMessage) -> None:
        await self.ws.send(message.to_json())

    async def report_error(self, error: ProtocolError) -> None:
        await self.send_message(ClientMessage("error", str(error)))

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
