"""What the µ-law WebSocket protocols (Twilio Media Streams and the browser's) share, as sans-I/O parts.

A protocol object turns each inbound text message into one typed event (or None for a message that needs
nothing), keeping the order rules of its protocol, and turns what the call says into outbound messages. It
knows nothing of sockets, the event loop or the call: callbridge.edge.media does the I/O.

- `parse_message`: one JSON object, or a `ProtocolError` that says what was wrong and which close code fits
  (1003 binary, 1007 malformed, 1009 too big, 1008 protocol order).
- `decode_payload` / `encode_payload`: base64 µ-law <-> int16 PCM.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import orjson

from callbridge.codec import ulaw_decode, ulaw_encode
from callbridge.core.messages import ClientMessage

# WebSocket close codes (RFC 6455).
NORMAL = 1000
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013


def websocket_url(base: str, path: str) -> str:
    """The ws(s):// URL of a socket route under a public base URL (wss unless the base is plain http)."""
    parts = urlsplit(base)
    return f"{'ws' if parts.scheme == 'http' else 'wss'}://{parts.netloc}{path}"


class ProtocolError(Exception):
    """Bad input from the client: close the socket with `code` after saying why."""

    def __init__(self, message: str, code: int = POLICY_VIOLATION) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Start:
    """The call begins: its id, and what the bot may know of it."""

    call_id: str
    parameters: dict[str, str] = field(default_factory=dict)
    #: A single-use token the call must claim before it opens (Registry.claim_once), and how long it remains
    #: valid (the claim need not outlive it); empty for protocols without one.
    claim: str = ""
    claim_seconds: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class Media:
    pcm: np.ndarray


@dataclass(frozen=True, slots=True)
class Played:
    """The far end has played everything up to the mark `name`."""

    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Event = Start | Media | Played | Dtmf | Ping | Stop


class MediaProtocol(Protocol):
    """One socket's wire protocol: inbound messages to events, the call's output to outbound messages."""

    transport: str  # the registry's name for calls on it
    rate: int  # µ-law sample rate both ways
    echoes_marks: bool  # the far end reports playback (Twilio marks); else playback is timed here

    def receive(self, raw: str | bytes) -> Event | None:
        """The event in one message (None: nothing to do); raises ProtocolError."""
        ...

    def media(self, samples: np.ndarray) -> str | bytes: ...
    def clear(self) -> str: ...
    def mark(self, name: str) -> str | None: ...
    def message(self, message: ClientMessage) -> str | None: ...
    def pong(self) -> str | None: ...
    def error(self, error: ProtocolError) -> str | None: ...


def parse_message(raw: str | bytes, max_bytes: int, kind: str = "event") -> dict[str, Any]:
    """One JSON object whose `kind` member (Media Streams' "event", ConversationRelay's "type") is a string."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not part of this protocol; send JSON text", UNSUPPORTED_DATA)
    if len(raw) > max_bytes:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit", MESSAGE_TOO_BIG)
    try:
        message = orjson.loads(raw)  # a third of json.loads' CPU on a media message
    except orjson.JSONDecodeError:
        raise ProtocolError("message is not valid JSON", INVALID_PAYLOAD) from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object", INVALID_PAYLOAD)
    if not isinstance(message.get(kind), str):
        raise ProtocolError(f'message has no "{kind}" string', INVALID_PAYLOAD)
    return message


def field_of(message: dict[str, Any], *path: str, kind: type = str) -> Any:
    """message[path...] checked for presence and type; a ProtocolError names what is missing."""
    value: Any = message
    for key in path:
        if not isinstance(value, dict) or key not in value:
            what = message.get("event", message.get("type"))  # the message's kind, as parse_message checked it
            raise ProtocolError(f"{what!r} message lacks {'.'.join(path)}", INVALID_PAYLOAD)
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
