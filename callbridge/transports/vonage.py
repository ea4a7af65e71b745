"""Vonage Voice API WebSockets, sans-I/O: the socket's messages as events, what goes back on it, the answer NCCO
and the check of Vonage's signed webhooks.

The answer webhook (callbridge.web.vonage) returns an NCCO whose `connect` action opens a WebSocket to
`/vonage/handler` with `audio/l16;rate=16000` and `headers` (the per-call token, the call's uuid, From, To);
Vonage puts those headers at the top level of the socket's first message, a text `websocket:connected`.
After it: binary messages of 16-bit little-endian linear PCM at 16 kHz, 20 ms (640 bytes) each, and text
events `websocket:dtmf` {digit}, `websocket:notify` {payload} and `websocket:cleared`. Back: binary audio,
which must also come in 640-byte messages (the media socket sends one 20 ms frame per message), and text
actions `{"action":"clear"}` (drops the audio Vonage has buffered: barge-in) and `{"action":"notify",
"payload":{...}}`, which Vonage answers with `websocket:notify` and the same payload once the audio before it
has played: the call's playback marks. Vonage sends no stop event: the socket simply closes.

The token is the same `{expiry}.{HMAC}` as Twilio's (callbridge.transports.twilio), bound to the call's uuid,
checked in `websocket:connected` and claimed once by the media socket.

Signed webhooks: Vonage sends `Authorization: Bearer <JWT>`, HS256 with the account's signature secret, whose
claims carry `iat` and `payload_hash` (the SHA-256 of the payload: a POST's body; for a GET the query
parameters as compact JSON, in their order). pyjwt checks it offline; the official `vonage` package would pull
in its whole SDK (HTTP client, several sub-packages) for the same few lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import numpy as np

from callbridge.core.messages import ClientMessage
from callbridge.transports.media import (
    INVALID_PAYLOAD,
    MESSAGE_TOO_BIG,
    Dtmf,
    Event,
    Media,
    Played,
    ProtocolError,
    Start,
    field_of,
    parse_message,
)
from callbridge.transports.twilio import token_valid_for

PATH = "/vonage/handler"
ANSWER_PATH = "/vonage/answer"
RATE = 16000
CONTENT_TYPE = f"audio/l16;rate={RATE}"
#: A signed webhook whose `iat` is further than this from now is refused: a replayed request. Vonage signs as it
#: sends, so this only needs to cover clock skew between Vonage and this host.
SIGNATURE_MAX_AGE_SECONDS = 300.0
#: Header names the answer webhook sets on the socket; the rest of `websocket:connected` is Vonage's own.
_OWN_HEADERS = ("token", "uuid")


def ncco(uri: str, headers: Mapping[str, str]) -> list[dict[str, Any]]:
    """The answer: connect the call to the socket at `uri`, wideband, `headers` in its first message."""
    return [{"action": "connect", "endpoint": [
        {"type": "websocket", "uri": uri, "content-type": CONTENT_TYPE, "headers": dict(headers)}]}]


def query_payload(query: list[tuple[str, str]]) -> bytes:
    """What a signed GET webhook's `payload_hash` covers: its query parameters, in order, as compact JSON."""
    return json.dumps(dict(query), separators=(",", ":"), ensure_ascii=False).encode()


def signature_refusal(secret: str, authorization: str, payload: bytes, now: float) -> str | None:
    """Why a webhook's `Authorization` is refused (None: accepted, or no secret is set). The JWT must be HS256
    with `secret`, issued within SIGNATURE_MAX_AGE_SECONDS of `now`, its payload_hash that of `payload`."""
    if not secret:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "no bearer token"
    try:
        # `iat` is checked here against `now`, both ways (clock skew), rather than by pyjwt against its own clock.
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"require": ["iat", "payload_hash"], "verify_iat": False})
    except jwt.InvalidTokenError as exc:
        return f"invalid JWT: {exc}"
    age = now - float(claims["iat"])
    if abs(age) > SIGNATURE_MAX_AGE_SECONDS:
        return f"signed {age:.0f} s ago (beyond ±{SIGNATURE_MAX_AGE_SECONDS:g} s: a replay, or a clock far off)"
    expected = hashlib.sha256(payload).hexdigest()
    if not isinstance(claims["payload_hash"], str) or not hmac.compare_digest(claims["payload_hash"], expected):
        return "payload_hash does not match the payload (tampered)"
    return None


class VonageProtocol:
    transport = "vonage"
    rate = RATE
    echoes_marks = True  # notify actions come back as websocket:notify once heard

    def __init__(self, secret: bytes, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.clock = clock  # Unix time: tokens are made by whichever replica took the webhook
        self.connected = False

    def receive(self, raw: str | bytes) -> Event | None:
        if isinstance(raw, bytes):
            return self._audio(raw)
        message = parse_message(raw, self.max_bytes)
        event = message["event"]
        if not self.connected:
            if event != "websocket:connected":
                raise ProtocolError(f"the first message must be websocket:connected, not {event!r}")
            return self._connected(message)
        if event == "websocket:dtmf":
            return Dtmf(field_of(message, "digit"))
        if event == "websocket:notify":
            return Played(field_of(message, "payload", "name"))
        if event == "websocket:cleared":
            return None  # the clear's acknowledgement: the call dropped that audio already
        if event == "websocket:connected":
            raise ProtocolError("unexpected 'websocket:connected' after it")
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    def _audio(self, raw: bytes) -> Media:
        if not self.connected:
            raise ProtocolError("audio before websocket:connected")
        if len(raw) > self.max_bytes:
            raise ProtocolError(f"message of {len(raw)} bytes exceeds the {self.max_bytes}-byte limit", MESSAGE_TOO_BIG)
        if len(raw) % 2:
            raise ProtocolError(f"binary audio of {len(raw)} bytes is not 16-bit samples", INVALID_PAYLOAD)
        return Media(np.frombuffer(raw, "<i2").astype(np.int16))

    def _connected(self, message: dict[str, Any]) -> Start:
        content_type = field_of(message, "content-type")
        if content_type.replace(" ", "") != CONTENT_TYPE:
            raise ProtocolError(f"unsupported content-type {content_type!r} (the NCCO asks for {CONTENT_TYPE})",
                                INVALID_PAYLOAD)
        uuid = field_of(message, "uuid")
        if not uuid:
            raise ProtocolError("uuid must not be empty", INVALID_PAYLOAD)
        token = message.get("token")
        token = token if isinstance(token, str) else ""
        valid_for = token_valid_for(self.secret, token, uuid, self.clock(), ANSWER_PATH)
        parameters = {key: value for key, value in message.items()
                      if isinstance(value, str) and key not in ("event", "content-type", *_OWN_HEADERS)}
        parameters["uuid"] = uuid
        self.connected = True
        return Start(uuid, parameters, claim=token, claim_seconds=valid_for)

    def media(self, samples: np.ndarray) -> bytes:
        return samples.astype("<i2", copy=False).tobytes()

    def clear(self) -> str:
        return '{"action":"clear"}'

    def mark(self, name: str) -> str | None:
        return json.dumps({"action": "notify", "payload": {"name": name}})

    def message(self, message: ClientMessage) -> str | None:
        return None

    def pong(self) -> str | None:
        return None

    def error(self, error: ProtocolError) -> str | None:
        return None
