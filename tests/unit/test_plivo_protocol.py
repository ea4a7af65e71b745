"""Plivo's wire protocol without a server: the V3 signature's signed string, the token in extraHeaders, the
messages back to Plivo."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import numpy as np
import pytest

from callbridge.transports.media import Media, Played, ProtocolError, Start, Stop
from callbridge.transports.plivo import PlivoProtocol, extra_headers, signature, signature_valid, wire_token
from callbridge.transports.twilio import call_token

SECRET = b"unit-secret"
CALL = "2b1f8a1e-6d0b-4a43-9c1e-1f0d7f1b2c3d"
NOW = 1_800_000_000.0


def hmac_b64(key: str, text: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), text.encode(), hashlib.sha256).digest()).decode()


def test_the_signed_string_sorts_query_then_form_parameters():
    # As Plivo's SDK builds it: the query sorted as k=v&..., then "." and the form's keys and values, then the nonce.
    url = "https://bot.example.com/plivo/incoming?b=2&a=1"
    expected = hmac_b64("tok", "https://bot.example.com/plivo/incoming?a=1&b=2.CallUUIDu1From155.n0nce")
    assert signature("tok", url, "n0nce", {"From": "155", "CallUUID": "u1"}) == expected
    assert signature("tok", "https://h/p", "n", {}) == hmac_b64("tok", "https://h/p.n")


def test_any_of_several_signatures_may_match():
    url, params = "https://h/plivo/incoming", {"CallUUID": "u1"}
    good = signature("tok", url, "n", params)
    headers = {"x-plivo-signature-v3": f"other=, {good}", "x-plivo-signature-v3-nonce": "n"}
    assert signature_valid("tok", url, params, headers)
    assert not signature_valid("tok", url, params, {**headers, "x-plivo-signature-v3-nonce": "m"})
    assert not signature_valid("tok", url, params, {"x-plivo-signature-v3": good})


def start(headers: str, call_id: str = CALL, **media_format) -> str:
    return json.dumps({"event": "start", "sequenceNumber": 1, "extra_headers": headers,
                       "start": {"callId": call_id, "streamId": "s-1", "accountId": "MA1",
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, **media_format}}})


def test_the_token_travels_in_extra_headers_with_letters_and_digits_only():
    token = call_token(SECRET, CALL, NOW + 30)
    headers = extra_headers({"token": wire_token(token), "From": "15551234", "To": "+1 (555) 99"})
    assert headers.count("=") == 2 and "To" not in headers, "a value Plivo refuses is left out"
    protocol = PlivoProtocol(SECRET, 65536, clock=lambda: NOW)
    event = protocol.receive(start(headers.replace(",", ";")))
    assert isinstance(event, Start) and event.claim == token
    assert event.parameters == {"From": "15551234", "CallUUID": CALL}
    assert event.claim_seconds == pytest.approx(30)
    with pytest.raises(ProtocolError, match="invalid or missing call token"):
        PlivoProtocol(SECRET, 65536, clock=lambda: NOW).receive(start(headers, call_id="another-call"))


def test_messages_to_plivo():
    protocol = PlivoProtocol(SECRET, 65536, auth_id="MA1", clock=lambda: NOW)
    protocol.receive(start(f"token={wire_token(call_token(SECRET, CALL, NOW + 30))}"))
    audio = json.loads(protocol.media(np.zeros(160, np.int16)))
    assert audio["event"] == "playAudio" and audio["streamId"] == "s-1"
    assert audio["media"]["contentType"] == "audio/x-mulaw" and audio["media"]["sampleRate"] == 8000
    assert len(base64.b64decode(audio["media"]["payload"])) == 160
    assert json.loads(protocol.mark("3")) == {"event": "checkpoint", "streamId": "s-1", "name": "3"}
    assert json.loads(protocol.clear()) == {"event": "clearAudio", "streamId": "s-1"}
    assert protocol.receive(json.dumps({"event": "playedStream", "streamId": "s-1", "name": "3"})) == Played("3")
    assert protocol.receive(json.dumps({"event": "clearedAudio", "streamId": "s-1"})) is None
    assert isinstance(protocol.receive(json.dumps({"event": "media", "media": {"payload": "//8="}})), Media)
    assert protocol.receive(json.dumps({"event": "stop", "streamId": "s-1"})) == Stop()
