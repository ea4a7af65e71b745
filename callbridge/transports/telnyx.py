"""Telnyx media streaming, sans-I/O: the stream's messages as events, and what goes back on it.

The webhook (callbridge.web.telnyx) answers TeXML `<Connect><Stream bidirectionalMode="rtp"
bidirectionalCodec="PCMU">`; Telnyx then opens the socket and sends `connected`, `start` (stream_id, and in
`start`: call_control_id, from, to, custom_parameters with the per-call token, media_format), `media` (base64
RTP payload without headers: µ-law 8 kHz here, any length), `dtmf`, `mark` (echoed once the audio before it has
played, or at once on `clear`), `error` (Telnyx refused a frame of ours) and `stop`. Numbers may arrive as
strings. Outbound: `media` {media.payload}, `mark` {mark.name} and `clear`; the socket is the stream's, so no
stream_id is needed.

The per-call token is Twilio's (callbridge.transports.twilio.call_token), bound to the call_control_id, which is
the CallSid the TeXML webhook carries; it opens one stream.

The webhook is signed with Ed25519 (headers `telnyx-signature-ed25519`, base64, and `telnyx-timestamp`, Unix
seconds; signed: `{timestamp}|{raw body}`), checked with the account's public key. The check is done here with
`cryptography` rather than the `telnyx` package: that is a generated REST SDK (httpx, pydantic, and PyNaCl for
this one check), while the algorithm is a dozen lines on a library already installed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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

PATH = "/telnyx/handler"
RATE = 8000
#: A webhook signed longer ago than this (or this far in the future) is refused: a captured one cannot be
#: replayed later. Telnyx's own SDKs use the same tolerance.
SIGNATURE_TOLERANCE_SECONDS = 300

logger = logging.getLogger("callbridge.telnyx")


def public_key(encoded: str) -> Ed25519PublicKey:
    """The account's public key from its base64 form (Mission Control: Keys & Credentials → Public Key);
    raises ValueError when it is not 32 bytes of base64."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_refusal(key: str, body: bytes, headers: Mapping[str, str], now: float) -> str | None:
    """Why the webhook's Ed25519 signature is not accepted, or None when it is (always, without a key)."""
    if not key:
        return None
    signature, timestamp = headers.get("telnyx-signature-ed25519", ""), headers.get("telnyx-timestamp", "")
    if not signature or not timestamp:
        return "missing telnyx-signature-ed25519 or telnyx-timestamp"
    if not timestamp.isdigit():
        return "telnyx-timestamp is not Unix seconds"
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return f"telnyx-timestamp is {now - int(timestamp):.0f} s off (stale or replayed)"
    try:
        public_key(key).verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
    except (binascii.Error, InvalidSignature):
        return "the signature does not match"
    return None


class TelnyxProtocol:
    transport = "telnyx"
    rate = RATE
    echoes_marks = True

    def __init__(self, secret: bytes, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.clock = clock
        self.stream_id = ""

    def receive(self, raw: str | bytes) -> Event | None:
        message = parse_message(raw, self.max_bytes)
        event = message["event"]
        if not self.stream_id:
            if event == "connected":
                return None
            if event != "start":
                raise ProtocolError(f"{event!r} before start")
            return self._start(message)
        if event == "media":
            if field_of(message, "media", kind=dict).get("track", "inbound") != "inbound":
                return None  # the call's outbound track (a stream of both tracks): the bot's own voice
            return Media(decode_payload(field_of(message, "media", "payload")))
        if event == "mark":
            return Played(field_of(message, "mark", "name"))
        if event == "dtmf":
            return Dtmf(field_of(message, "dtmf", "digit"))
        if event == "error":
            logger.warning("telnyx %s: Telnyx reports an error: %s", self.stream_id, message.get("payload"))
            return None
        if event == "stop":
            return Stop()
        if event in ("connected", "start"):
            raise ProtocolError(f"unexpected {event!r} after start")
        raise ProtocolError(f"unknown event {event!r}", INVALID_PAYLOAD)

    def _start(self, message: dict) -> Start:
        stream_id = field_of(message, "stream_id")
        if not stream_id:
            raise ProtocolError("stream_id must not be empty", INVALID_PAYLOAD)
        call_control_id = field_of(message, "start", "call_control_id")
        params = message["start"].get("custom_parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("start.custom_parameters must be an object", INVALID_PAYLOAD)
        media_format = message["start"].get("media_format") or {}
        if not isinstance(media_format, dict):
            raise ProtocolError("start.media_format must be an object", INVALID_PAYLOAD)
        encoding, rate = media_format.get("encoding", "PCMU"), str(media_format.get("sample_rate", RATE))
        if encoding != "PCMU" or rate != str(RATE):
            raise ProtocolError(f"unsupported media_format {media_format} (the TeXML asks for PCMU at 8000 Hz)",
                                INVALID_PAYLOAD)
        token = str(params.get("token", ""))
        valid_for = token_valid_for(self.secret, token, call_control_id, self.clock(), "/telnyx/incoming")
        parameters = {str(k): str(v) for k, v in params.items() if k != "token"}
        parameters["CallSid"] = call_control_id
        self.stream_id = stream_id
        return Start(stream_id, parameters, claim=token, claim_seconds=valid_for)

    def media(self, samples: np.ndarray) -> str:
        return f'{{"event":"media","media":{{"payload":"{encode_payload(samples)}"}}}}'

    def clear(self) -> str:
        return '{"event":"clear"}'

    def mark(self, name: str) -> str | None:
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def message(self, message: ClientMessage) -> str | None:
        return None

    def pong(self) -> str | None:
        return None

    def error(self, error: ProtocolError) -> str | None:
        return None
