"""Plivo's audio stream (bidirectional `<Stream>`), sans-I/O: its messages as events, and what goes back on it.

Inbound: `start` (start.streamId, start.callId, start.accountId, start.mediaFormat, and `extra_headers` with the
per-call token), `media` (base64 µ-law 8 kHz), `dtmf`, `playedStream` (a `checkpoint` whose audio before it
has played), `clearedAudio` (the answer to `clearAudio`: nothing to do). The call ends when Plivo closes the
socket (a `stop`, which its docs do not list, ends it too). Outbound: `playAudio`, `checkpoint` (playback
tracking) and `clearAudio` (barge-in). Checkpoints cleared by `clearAudio` are never answered; the call forgets
them on the barge-in itself.

The per-call token is Twilio's (callbridge.transports.twilio.call_token, an HMAC of the CallUUID with its
expiry), made by `POST /plivo/incoming` (callbridge.web.plivo). It travels in the Stream's `extraHeaders`,
which take letters and digits only: its dot goes as "x" (neither part of the token holds an "x").

Plivo signs its webhooks with X-Plivo-Signature-V3 (`signature_valid`). The plivo SDK's
`validate_v3_signature` does the same offline, but the SDK brings requests, lxml and more for one HMAC, so the
documented algorithm is implemented here with hmac: HMAC-SHA256, keyed with the auth token, of the URL with its
query parameters sorted, then the sorted form parameters as key+value pairs, then "." and the
nonce; base64; the header may carry several signatures, comma-separated. The stream's upgrade is not checked
for a signature (what Plivo signs there is not documented): its per-call token, from the signed webhook, is
what admits it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

import numpy as np

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
from callbridge.transports.twilio import token_valid_for

PATH = "/plivo/handler"
WEBHOOK = "/plivo/incoming"
RATE = 8000
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
#: What extraHeaders may hold in a value (Plivo's rule), so only such caller details are passed on.
_HEADER_VALUE = re.compile(r"[A-Za-z0-9]{1,64}")


def wire_token(token: str) -> str:
    """The call token as extraHeaders can carry it."""
    return token.replace(".", "x")


def extra_headers(values: Mapping[str, str]) -> str:
    """The Stream's extraHeaders attribute: `key=value` pairs, those with values Plivo allows."""
    return ",".join(f"{key}={value}" for key, value in values.items() if _HEADER_VALUE.fullmatch(value))


def _parse_extra_headers(text: str) -> dict[str, str]:
    """`start`'s extra_headers: pairs separated by "," (as written in the XML) or ";" (as Plivo's docs show)."""
    pairs = (item.partition("=") for item in re.split(r"[,;]", text) if item)
    return {key.strip(): value.strip() for key, _, value in pairs}


def signature(auth_token: str, url: str, nonce: str, params: Mapping[str, str]) -> str:
    """X-Plivo-Signature-V3 of a POST to `url` with these form `params`."""
    parts = urlsplit(url)
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    sorted_query = "&".join(f"{key}={value}" for key in sorted(query) for value in sorted(query[key]))
    form = "".join(f"{key}{params[key]}" for key in sorted(params))
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if sorted_query or form:
        signed += "?" + sorted_query
    if sorted_query and form:
        signed += "."
    signed += form
    mac = hmac.new(auth_token.encode(), f"{signed}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def signature_valid(auth_token: str, url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    """X-Plivo-Signature-V3 (with its nonce) of a POST to `url` with `params`; always true without an auth token."""
    if not auth_token:
        return True
    sent, nonce = headers.get("x-plivo-signature-v3", ""), headers.get("x-plivo-signature-v3-nonce", "")
    if not sent or not nonce:
        return False
    expected = signature(auth_token, url, nonce, params)
    return any(hmac.compare_digest(expected, candidate.strip()) for candidate in sent.split(","))


class PlivoProtocol:
    transport = "plivo"
    rate = RATE
    echoes_marks = True  # playedStream answers each checkpoint once its audio has played

    def __init__(self, secret: bytes, max_bytes: int, auth_id: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.auth_id = auth_id  # PLIVO_AUTH_ID: when set, a stream of another account is refused
        self.clock = clock  # Unix time: tokens are made by whichever replica took the webhook
        self.stream_id = ""
        self._id_json = '""'

    def receive(self, raw: str | bytes) -> Event | None:
        message = parse_message(raw, self.max_bytes)
        event = message["event"]
        if not self.stream_id:
            if event != "start":
                raise ProtocolError(f"{event!r} before start")
            return self._start(message)
        if event == "media":
            return Media(decode_payload(field_of(message, "media", "payload")))
        if event == "playedStream":
            return Played(field_of(message, "name"))
        if event == "clearedAudio":
            return None
        if event == "dtmf":
            return Dtmf(field_of(message, "dtmf", "digit"))
        if event == "stop":  # not among the messages Plivo's docs list, but integrations report one at hang-up
            return Stop()
        if event == "start":
            raise ProtocolError("unexpected 'start' after start")
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    def _start(self, message: dict) -> Start:
        stream_id = field_of(message, "start", "streamId")
        if not stream_id:
            raise ProtocolError("start.streamId must not be empty", INVALID_PAYLOAD)
        call_id = field_of(message, "start", "callId")
        account = message["start"].get("accountId", "")
        if self.auth_id and account and account != self.auth_id:
            raise ProtocolError("the stream is another Plivo account's (start.accountId is not PLIVO_AUTH_ID)")
        media_format = message["start"].get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolError("start.mediaFormat must be an object", INVALID_PAYLOAD)
        encoding, rate = media_format.get("encoding", "audio/x-mulaw"), str(media_format.get("sampleRate", RATE))
        if encoding != "audio/x-mulaw" or rate != str(RATE):
            raise ProtocolError(f"unsupported mediaFormat {media_format} (the Stream's contentType must be "
                                f"{CONTENT_TYPE})", INVALID_PAYLOAD)
        headers = message.get("extra_headers") or ""
        if not isinstance(headers, str):
            raise ProtocolError("extra_headers must be a string", INVALID_PAYLOAD)
        parameters = _parse_extra_headers(headers)
        token = parameters.pop("token", "").replace("x", ".", 1)
        valid_for = token_valid_for(self.secret, token, call_id, self.clock(), WEBHOOK)
        parameters["CallUUID"] = call_id
        self.stream_id = stream_id
        self._id_json = json.dumps(stream_id)
        return Start(stream_id, parameters, claim=token, claim_seconds=valid_for)

    def media(self, samples: np.ndarray) -> str:
        return (f'{{"event":"playAudio","streamId":{self._id_json},"media":{{"contentType":"audio/x-mulaw",'
                f'"sampleRate":{RATE},"payload":"{encode_payload(samples)}"}}}}')

    def clear(self) -> str:
        return f'{{"event":"clearAudio","streamId":{self._id_json}}}'

    def mark(self, name: str) -> str | None:
        return json.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def message(self, message: ClientMessage) -> str | None:
        return None

    def pong(self) -> str | None:
        return None

    def error(self, error: ProtocolError) -> str | None:
        return None
