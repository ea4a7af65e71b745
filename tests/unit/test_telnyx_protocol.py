"""Telnyx's media streaming frames as events, what goes back, and the webhook's Ed25519 signature check."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callbridge.codec import ulaw_decode, ulaw_encode
from callbridge.transports.media import Dtmf, Media, Played, ProtocolError, Start, Stop
from callbridge.transports.telnyx import TelnyxProtocol, public_key, signature_refusal
from callbridge.transports.twilio import call_token
from tests.telnyx_caller import public_key_base64, signed_headers, start_message

SECRET = b"test-secret"
CALL = "v3:9X2vxPDFY2RHSJ1EdMS0RHRksMTg7ldNxdjWbVr9zBjbGjGsSe-aiQ"
NOW = 1_800_000_000.0


def started() -> tuple[TelnyxProtocol, Start]:
    protocol = TelnyxProtocol(SECRET, 65536, clock=lambda: NOW)
    assert protocol.receive(json.dumps({"event": "connected", "version": "1.0.0"})) is None
    token = call_token(SECRET, CALL, NOW + 30)
    event = protocol.receive(start_message("stream-1", CALL, {"token": token, "From": "+1555", "To": "+1666"}))
    assert isinstance(event, Start)
    return protocol, event


def media(payload: bytes, track: str = "inbound") -> str:
    return json.dumps({"event": "media", "sequence_number": "4", "stream_id": "stream-1",
                       "media": {"track": track, "chunk": "2", "timestamp": "40",
                                 "payload": base64.b64encode(payload).decode()}})


def test_start_opens_the_stream_with_its_token_to_claim_and_the_call_id_for_the_bot():
    _, event = started()
    assert event.call_id == "stream-1" and event.claim_seconds == pytest.approx(30)
    assert event.parameters == {"From": "+1555", "To": "+1666", "CallSid": CALL}


def test_inbound_media_dtmf_marks_and_stop_become_events_and_the_outbound_track_is_ignored():
    protocol, _ = started()
    samples = (np.sin(np.arange(160) / 5) * 8000).astype(np.int16)
    event = protocol.receive(media(ulaw_encode(samples)))
    assert isinstance(event, Media) and np.array_equal(event.pcm, ulaw_decode(ulaw_encode(samples)))
    assert protocol.receive(media(ulaw_encode(samples), track="outbound")) is None
    assert protocol.receive(json.dumps({"event": "dtmf", "stream_id": "stream-1", "dtmf": {"digit": "7"}})) == Dtmf("7")
    assert protocol.receive(json.dumps({"event": "mark", "stream_id": "stream-1", "mark": {"name": "reply-1"}})) == \
        Played("reply-1")
    error = {"event": "error", "stream_id": "stream-1",
             "payload": {"code": 100002, "title": "unknown_error", "detail": "An unknown error occurred"}}
    assert protocol.receive(json.dumps(error)) is None  # Telnyx refused a frame of ours: logged, the call goes on
    assert protocol.receive(json.dumps({"event": "stop", "stream_id": "stream-1", "stop": {}})) == Stop()


def test_outbound_messages_are_telnyx_media_mark_and_clear():
    protocol, _ = started()
    samples = np.zeros(800, np.int16)
    sent = json.loads(protocol.media(samples))
    assert sent == {"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(samples)).decode()}}
    assert json.loads(protocol.mark("reply-2") or "") == {"event": "mark", "mark": {"name": "reply-2"}}
    assert json.loads(protocol.clear()) == {"event": "clear"}


@pytest.mark.parametrize(("frame", "code", "reason"), [
    ({"event": "media", "media": {"payload": ""}}, 1008, "before start"),
    ({"event": "start", "start": {"call_control_id": CALL}}, 1007, "lacks stream_id"),
    ({"event": "start", "stream_id": "s", "start": {"call_control_id": CALL, "custom_parameters": {},
                                                    "media_format": {"encoding": "L16", "sample_rate": 16000}}},
     1007, "unsupported media_format"),
    ({"event": "start", "stream_id": "s", "start": {"call_control_id": CALL, "custom_parameters": {"token": "x"}}},
     1008, "invalid or missing call token"),
])
def test_a_bad_opening_is_a_protocol_error_with_a_fitting_close_code(frame, code, reason):
    with pytest.raises(ProtocolError, match=reason) as refused:
        TelnyxProtocol(SECRET, 65536, clock=lambda: NOW).receive(json.dumps(frame))
    assert refused.value.code == code


KEY = Ed25519PrivateKey.generate()
BODY = b"CallSid=v3%3Aabc&From=%2B15550100001&To=%2B15550100002"


def test_a_signature_of_the_account_within_five_minutes_is_accepted():
    encoded = public_key_base64(KEY)
    assert signature_refusal(encoded, BODY, signed_headers(KEY, BODY, int(NOW) - 299), NOW) is None
    assert signature_refusal("", BODY, {}, NOW) is None, "no key set: nothing to check"


@pytest.mark.parametrize(("headers", "reason"), [
    (signed_headers(Ed25519PrivateKey.generate(), BODY, int(NOW)), "does not match"),
    (signed_headers(KEY, BODY + b"&x=1", int(NOW)), "does not match"),
    (signed_headers(KEY, BODY, int(NOW) - 301), "stale"),
    ({**signed_headers(KEY, BODY, int(NOW)), "telnyx-timestamp": str(int(NOW) + 1)}, "does not match"),
    ({**signed_headers(KEY, BODY, int(NOW)), "telnyx-timestamp": "soon"}, "not Unix seconds"),
    ({"telnyx-timestamp": str(int(NOW))}, "missing"),
])
def test_other_signatures_are_refused_saying_why(headers, reason):
    refusal = signature_refusal(public_key_base64(KEY), BODY, headers, NOW)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize("encoded", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_public_key_that_is_not_32_bytes_of_base64_is_refused(encoded):
    with pytest.raises(ValueError):
        public_key(encoded)
