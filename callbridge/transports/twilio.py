"""Twilio Media Streams, sans-I/O: the stream's messages as events, and what goes back on it.

Inbound: `connected` (ignored), `start` (streamSid, callSid, customParameters with the per-call token,
mediaFormat), `media` (base64 µ-law 8 kHz), `mark` (echoed once the caller has heard the audio before it, or
on `clear`), `dtmf`, `stop`. Outbound: `media`, `mark` and `clear` only; client messages have no place on
Twilio's socket. The token is an HMAC of the CallSid made by the webhook (callbridge.web.telephone), so any
replica can check it in `start` without shared state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

import numpy as np
from twilio.request_validator import RequestValidator

from callbridge.core.messages import ClientMessage
from callbridge.transports.media import (
    INVALID_PAYLOAD,
    Dtmf,
    Event,
    Media,
    Played,
    ProtocolError,
    Start,
    Stop,
    decode_payload,
    encode_payload,
    field_of,
    parse_message,
)

PATH = "/telephone/handler"
RATE = 8000
_PROCESS_SECRET = secrets.token_bytes(32)


def token_secret(call_token_secret: str, auth_token: str) -> bytes:
    """CALL_TOKEN_SECRET, else TWILIO_AUTH_TOKEN, else a per-process secret (fine for one replica)."""
    secret = call_token_secret or auth_token
    return secret.encode() if secret else _PROCESS_SECRET


def call_token(secret: bytes, call_sid: str) -> str:
    return hmac.new(secret, call_sid.encode(), hashlib.sha256).hexdigest()[:32]


def stream_url(base: str) -> str:
    """The wss:// URL of the stream handler under a public base URL."""
    parts = urlsplit(base)
    return f"{'ws' if parts.scheme == 'http' else 'wss'}://{parts.netloc}{PATH}"


def signature_valid(auth_token: str, url: str, params: dict[str, str], headers: Mapping[str, str]) -> bool:
    """X-Twilio-Signature over `url` and `params`; always true without an auth token."""
    if not auth_token:
        return True
    signature = headers.get("x-twilio-signature", "")
    return bool(signature) and RequestValidator(auth_token).validate(url, params, signature)


class TwilioProtocol:
    transport = "twilio"
    rate = RATE
    echoes_marks = True

    def __init__(self, secret: bytes, max_bytes: int) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.stream_sid = ""
        self._sid_json = '""'

    def receive(self, raw: str | bytes) -> Event | None:
        message = parse_message(raw, self.max_bytes)
        event = message["event"]
        if not self.stream_sid:
            if event == "connected":
                return None
            if event != "start":
                raise ProtocolError(f"{event!r} before start")
            return self._start(message)
        if event == "media":
            return Media(decode_payload(field_of(message, "media", "payload")))
        if event == "mark":
            return Played(field_of(message, "mark", "name"))
        if event == "dtmf":
            return Dtmf(field_of(message, "dtmf", "digit"))
        if event == "stop":
            return Stop()
        if event in ("connected", "start"):
            raise ProtocolError(f"unexpected {event!r} after start")
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    def _start(self, message: dict) -> Start:
        stream_sid = field_of(message, "start", "streamSid")
        if not stream_sid:
            raise ProtocolError("start.streamSid must not be empty", INVALID_PAYLOAD)
        call_sid = field_of(message, "start", "callSid")
        params = message["start"].get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("start.customParameters must be an object", INVALID_PAYLOAD)
        media_format = message["start"].get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolError("start.mediaFormat must be an object", INVALID_PAYLOAD)
        encoding, rate = media_format.get("encoding", "audio/x-mulaw"), str(media_format.get("sampleRate", RATE))
        if encoding != "audio/x-mulaw" or rate != str(RATE):
            raise ProtocolError(f"unsupported mediaFormat {media_format}", INVALID_PAYLOAD)
        if not hmac.compare_digest(str(params.get("token", "")), call_token(self.secret, call_sid)):
            raise ProtocolError("invalid or missing call token (start the call through /telephone/incoming)")
        parameters = {str(k): str(v) for k, v in params.items() if k != "token"}
        parameters["CallSid"] = call_sid
        self.stream_sid = stream_sid
        self._sid_json = json.dumps(stream_sid)
        return Start(stream_sid, parameters)

    def media(self, samples: np.ndarray) -> str:
        return f'{{"event":"media","streamSid":{self._sid_json},"media":{{"payload":"{encode_payload(samples)}"}}}}'

    def clear(self) -> str:
        return f'{{"event":"clear","streamSid":{self._sid_json}}}'

    def mark(self, name: str) -> str | None:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def message(self, message: ClientMessage) -> str | None:
        return None

    def pong(self) -> str | None:
        return None

    def error(self, error: ProtocolError) -> str | None:
        return None
