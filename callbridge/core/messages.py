"""What the call runtime hands to transports, and the client messages of the FastRTC-compatible contract.

Client messages are `{"type": ..., "data": ...}` with type send_input, fetch_output, stopword,
error, warning or log. Transports that speak to a browser send them as JSON; the Twilio transport
only speaks Twilio's own protocol and logs them instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

ClientMessageType = Literal["send_input", "fetch_output", "stopword", "error", "warning", "log"]


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: ClientMessageType
    data: Any = None

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "data": jsonable(self.data)})


@dataclass(frozen=True, slots=True)
class AudioOut:
    """One 20 ms frame of the bot's speech, int16 at the transport's outbound rate."""

    samples: np.ndarray


@dataclass(frozen=True, slots=True)
class Flush:
    """Barge-in: drop whatever is queued for playback (Twilio: send `clear`)."""


@dataclass(frozen=True, slots=True)
class PlaybackMark:
    """The audio queued before this ends here; report `Call.playback_finished(name)` once it is heard (a
    reply's end, or a bot's `Mark`)."""

    name: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call now: everything the bot said has been heard."""


@dataclass(frozen=True, slots=True)
class TransferCall:
    """Hand the call on to the phone number `to`: everything the bot said has been heard. The transport asks its
    carrier (Twilio: redirect the live call to `<Dial>`); the stream then ends, or `Call.transfer_failed` says
    why not."""

    to: str


@dataclass(frozen=True, slots=True)
class FrameOut:
    """A picture the bot yielded ((H, W, 3) uint8 BGR): the video track shows it until the next."""

    image: np.ndarray


Outbound = AudioOut | ClientMessage | Flush | PlaybackMark | Hangup | TransferCall | FrameOut


def ends_reply(mark_name: str) -> bool:
    """Whether a playback mark is a reply's end: the marks inside a reply (a bot's Mark, a resume point) are
    named with a "/" (callbridge.core.playback)."""
    return "/" not in mark_name


def jsonable(value: Any) -> Any:
    """Turn bot outputs (numpy arrays and scalars, tuples, anything else) into JSON-encodable values."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def failed(error: str, **meta: Any) -> dict[str, Any]:
    """The contract's refusal body: `{"status": "failed", "meta": {"error": ..., ...}}`."""
    return {"status": "failed", "meta": {"error": error, **meta}}


def log(data: Any) -> ClientMessage:
    return ClientMessage("log", data)
