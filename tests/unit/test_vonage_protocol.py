"""Vonage's WebSocket protocol and signed webhooks, sans-I/O: messages to events, output to messages."""

from __future__ import annotations

import hashlib
import json

import jwt
import numpy as np
import pytest

from callbridge.transports.media import Dtmf, Media, Played, ProtocolError, Start
from callbridge.transports.twilio import call_token
from callbridge.transports.vonage import VonageProtocol, ncco, query_payload, signature_refusal

SECRET = b"test-secret"
UUID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
NOW = 1_800_000_000.0
SIGNING = "a-signature-secret-of-32-bytes-at-least"


def connected(token: str, **extra: str) -> str:
    return json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "token": token,
                       "uuid": UUID, "From": "447700900001", **extra})


def protocol(at: float = NOW) -> VonageProtocol:
    return VonageProtocol(SECRET, 65536, clock=lambda: at)


def test_connected_opens_the_call_with_its_headers_as_parameters_and_the_token_to_claim():
    token = call_token(SECRET, UUID, NOW + 30)
    event = protocol(NOW + 10).receive(connected(token, language="en-GB"))
    assert isinstance(event, Start) and event.call_id == UUID
    assert event.claim == token and event.claim_seconds == pytest.approx(20, abs=0.01)
    assert event.parameters == {"From": "447700900001", "language": "en-GB", "uuid": UUID}


def test_events_after_connected():
    vonage = protocol()
    vonage.receive(connected(call_token(SECRET, UUID, NOW + 30)))
    samples = np.array([0, 1, -1, 32767, -32768], np.int16)
    media = vonage.receive(samples.astype("<i2").tobytes())
    assert isinstance(media, Media) and media.pcm.dtype == np.int16 and list(media.pcm) == list(samples)
    assert vonage.receive('{"event":"websocket:dtmf","digit":"5","duration":260}') == Dtmf("5")
    assert vonage.receive('{"event":"websocket:notify","payload":{"name":"reply-1"}}') == Played("reply-1")
    assert vonage.receive('{"event":"websocket:cleared"}') is None


def test_a_token_for_another_call_is_refused():
    with pytest.raises(ProtocolError, match="invalid or missing call token") as refused:
        protocol().receive(connected(call_token(SECRET, "another-uuid", NOW + 30)))
    assert refused.value.code == 1008


def test_output_is_little_endian_pcm_and_vonages_actions():
    vonage = protocol()
    frame = np.arange(320, dtype=np.int16)
    assert vonage.media(frame) == frame.astype("<i2").tobytes() and len(vonage.media(frame)) == 640
    assert json.loads(vonage.clear()) == {"action": "clear"}
    assert json.loads(vonage.mark("reply-3")) == {"action": "notify", "payload": {"name": "reply-3"}}


def test_the_ncco_connects_a_wideband_websocket_with_the_headers():
    (action,) = ncco("wss://bot.example.com/vonage/handler", {"token": "t", "uuid": UUID})
    assert action == {"action": "connect", "endpoint": [{
        "type": "websocket", "uri": "wss://bot.example.com/vonage/handler", "content-type": "audio/l16;rate=16000",
        "headers": {"token": "t", "uuid": UUID}}]}


def bearer(payload: bytes, iat: float, secret: str = SIGNING, **claims: object) -> str:
    body = {"iat": int(iat), "payload_hash": hashlib.sha256(payload).hexdigest(), **claims}
    return "Bearer " + jwt.encode(body, secret, algorithm="HS256")


def test_signed_webhooks():
    payload = query_payload([("uuid", UUID), ("from", "447700900001")])
    assert payload == b'{"uuid":"' + UUID.encode() + b'","from":"447700900001"}'
    assert signature_refusal(SIGNING, bearer(payload, NOW - 5), payload, NOW) is None
    assert signature_refusal("", "", payload, NOW) is None, "no secret: nothing to check"
    refusals = {
        "no bearer token": signature_refusal(SIGNING, "", payload, NOW),
        "invalid JWT": signature_refusal(SIGNING, bearer(payload, NOW, "another-secret-of-32-bytes-or-more"),
                                         payload, NOW),
        "a replay": signature_refusal(SIGNING, bearer(payload, NOW - 301), payload, NOW),
        "a clock far off": signature_refusal(SIGNING, bearer(payload, NOW + 301), payload, NOW),
        "tampered": signature_refusal(SIGNING, bearer(payload, NOW), payload + b" ", NOW),
    }
    for expected, refusal in refusals.items():
        assert refusal is not None and expected in refusal, (expected, refusal)
    no_hash = "Bearer " + jwt.encode({"iat": int(NOW)}, SIGNING, algorithm="HS256")
    assert "payload_hash" in (signature_refusal(SIGNING, no_hash, payload, NOW) or "")
