"""The browser's µ-law WebSocket (`/websocket/offer`), the FastRTC-compatible contract at phone quality.

The client sends `{"event":"start","websocket_id":ID}` first, then `media` events with base64 µ-law at
8 kHz, `ping` (answered with `pong`) and `stop`. The server sends `media` events, `{"event":"clear"}` on
barge-in, and the JSON client messages on the same socket; bad input gets an `error` message before the
close. Browsers do not echo playback, so a reply counts as heard when its paced audio has played out.
"""

from __future__ import annotations

import numpy as np

from callbridge.core.messages import ClientMessage
from callbridge.transports.media import (
    INVALID_PAYLOAD,
    Event,
    Media,
    Ping,
    ProtocolError,
    Start,
    Stop,
    decode_payload,
    encode_payload,
    field_of,
    parse_message,
)

PATH = "/websocket/offer"


class BrowserProtocol:
    transport = "websocket"
    rate = 8000
    echoes_marks = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.started = False

    def receive(self, raw: str | bytes) -> Event | None:
        message = parse_message(raw, self.max_bytes)
        event = message["event"]
        if not self.started:
            if event != "start":
                raise ProtocolError(f"the first message must be start, not {event!r}")
            call_id = field_of(message, "websocket_id")
            if not call_id:
                raise ProtocolError("websocket_id must not be empty", INVALID_PAYLOAD)
            self.started = True
            return Start(call_id)
        if event == "media":
            return Media(decode_payload(field_of(message, "media", "payload")))
        if event == "ping":
            return Ping()
        if event == "stop":
            return Stop()
        if event == "start":
            raise ProtocolError("unexpected 'start' after start")
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    def media(self, samples: np.ndarray) -> str:
        return f'{{"event":"media","media":{{"payload":"{encode_payload(samples)}"}}}}'

    def clear(self) -> str:
        return '{"event":"clear"}'

    def mark(self, name: str) -> str | None:
        return None

    def message(self, message: ClientMessage) -> str | None:
        return message.to_json()

    def pong(self) -> str | None:
        return '{"event":"pong"}'

    def error(self, error: ProtocolError) -> str | None:
        return ClientMessage("error", str(error)).to_json()
