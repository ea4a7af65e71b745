"""WebRTC signalling, the FastRTC-compatible contract's `POST /webrtc/offer` bodies, as typed requests.

- Offer: `{"sdp", "type": "offer", "webrtc_id"}`, mode from the `mode` query parameter or body field:
  `send-receive` (default), `send` (the client only sends: the server listens, the bot's audio is dropped)
  or `receive` (the client only receives: a bot that talks), and modality from the `modality` query parameter or
  body field: `audio` (default), `video` or `audio-video`.
- Trickled candidate: `{"type": "ice-candidate", "webrtc_id", "candidate": {"candidate", "sdpMid",
  "sdpMLineIndex"}}`; an empty candidate string means end-of-candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

Mode = Literal["send-receive", "send", "receive"]
MODES: tuple[str, ...] = get_args(Mode)
Modality = Literal["audio", "video", "audio-video"]
MODALITIES: tuple[str, ...] = get_args(Modality)


class OfferError(Exception):
    """A request the route refuses: `status` and a message for the client."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Offer:
    call_id: str
    sdp: str
    mode: Mode
    modality: Modality = "audio"

    @property
    def has_audio(self) -> bool:
        return self.modality != "video"

    @property
    def has_video(self) -> bool:
        return self.modality != "audio"


@dataclass(frozen=True)
class Candidate:
    call_id: str
    candidate: dict[str, Any]  # the browser's RTCIceCandidate.toJSON()


def parse_request(body: Any, query_mode: str | None, query_modality: str | None = None) -> Offer | Candidate:
    """The request in a body; raises OfferError saying what is wrong."""
    if not isinstance(body, dict):
        raise OfferError("body must be a JSON object")
    call_id = body.get("webrtc_id")
    if not isinstance(call_id, str) or not call_id:
        raise OfferError('body needs a non-empty string "webrtc_id"')
    if body.get("type") == "ice-candidate":
        candidate = body.get("candidate")
        if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
            raise OfferError('"candidate" must be an object with a "candidate" string')
        return Candidate(call_id, candidate)
    if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
        raise OfferError('body needs "type": "offer" and an "sdp" string (or "type": "ice-candidate")')
    mode = query_mode or body.get("mode") or "send-receive"
    if mode not in MODES:
        raise OfferError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    modality = query_modality or body.get("modality") or "audio"
    if modality not in MODALITIES:
        raise OfferError(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    return Offer(call_id, body["sdp"], mode, modality)
