"""Twilio Media Streams, sans-I/O: the stream's messages as events, and what goes back on it.

Inbound: `connected` (ignored), `start` (streamSid, callSid, customParameters with the per-call token,
mediaFormat), `media` (base64 µ-law 8 kHz), `mark` (echoed once the caller has heard the audio before it, or
on `clear`), `dtmf`, `stop`. Outbound: `media`, `mark` and `clear` only; client messages have no place on
Twilio's socket.

The per-call token (`call_token`) is made by the webhook (callbridge.web.telephone): an expiry and an HMAC of
the CallSid with that expiry, so any replica can check it in `start` without shared state, and nobody can
extend it. It opens one stream: `start` hands it on as `Start.claim`, and the media socket claims it in the
registry (shared by every replica through Redis) before the call opens, so a second stream with it —
at the same time, or replayed after the call — is refused. The stream's own X-Twilio-Signature cannot do
that: it is the same for every call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping

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
_TOKEN = re.compile(r"([0-9]{1,15})\.([0-9a-f]{32})")  # expiry in Unix ms, HMAC


def token_secret(call_token_secret: str, auth_token: str) -> bytes:
    """CALL_TOKEN_SECRET, else TWILIO_AUTH_TOKEN, else a per-process secret (fine for one replica)."""
    secret = call_token_secret or auth_token
    return secret.encode() if secret else _PROCESS_SECRET


def call_token(secret: bytes, call_sid: str, expires: float) -> str:
    """`{expiry in Unix milliseconds}.{HMAC of the CallSid and that expiry}`: valid for one stream, until then."""
    expires_ms = int(expires * 1000)
    return f"{expires_ms}.{_token_mac(secret, call_sid, expires_ms)}"


def _token_mac(secret: bytes, call_sid: str, expires_ms: int) -> str:
    return hmac.new(secret, f"{call_sid}.{expires_ms}".encode(), hashlib.sha256).hexdigest()[:32]


def token_valid_for(secret: bytes, token: str, call_id: str, now: float, webhook: str) -> float:
    """Seconds `token` remains valid for `call_id` at Unix time `now`; raises ProtocolError if it is forged or
    expired. `webhook` names the route that hands such tokens out (for the error message)."""
    parts = _TOKEN.fullmatch(token)
    if parts is None or not hmac.compare_digest(parts[2], _token_mac(secret, call_id, int(parts[1]))):
        raise ProtocolError(f"invalid or missing call token (start the call through {webhook})")
    valid_for = int(parts[1]) / 1000 - now
    if valid_for <= 0:
        raise ProtocolError(f"call token expired {-valid_for:.1f} s ago (streams start within CALL_TOKEN_SECONDS "
                            "of the webhook)")
    return valid_for


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

    def __init__(self, secret: bytes, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.clock = clock  # Unix time: tokens are made by whichever replica took the webhook
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
        token = str(params.get("token", ""))
        valid_for = token_valid_for(self.secret, token, call_sid, self.clock(), "/telephone/incoming")
        parameters = {str(k): str(v) for k, v in params.items() if k != "token"}
        parameters["CallSid"] = call_sid
        self.stream_sid = stream_sid
        self._sid_json = json.dumps(stream_sid)
        return Start(stream_sid, parameters, claim=token, claim_seconds=valid_for)

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
