"""The per-call token in Twilio's `start`: made by the webhook, bound to its CallSid and its expiry."""

from __future__ import annotations

import json

import pytest

from callbridge.transports.media import ProtocolError, Start
from callbridge.transports.twilio import TwilioProtocol, call_token

SECRET = b"test-secret"
CALL_SID = "CA" + "1" * 32
NOW = 1_800_000_000.0


def start(token: str, call_sid: str = CALL_SID) -> str:
    return json.dumps({"event": "start", "start": {"streamSid": "MZ1", "callSid": call_sid,
                                                    "customParameters": {"token": token, "From": "+1555"}}})


def receive_start(token: str, at: float = NOW, call_sid: str = CALL_SID) -> Start:
    event = TwilioProtocol(SECRET, 65536, clock=lambda: at).receive(start(token, call_sid))
    assert isinstance(event, Start)
    return event


def test_a_valid_token_is_handed_on_to_be_claimed_for_as_long_as_it_remains_valid():
    token = call_token(SECRET, CALL_SID, NOW + 30)
    event = receive_start(token, at=NOW + 10)
    assert event.claim == token and event.claim_seconds == pytest.approx(20, abs=0.01)
    assert event.parameters == {"From": "+1555", "CallSid": CALL_SID}, "the token is not the bot's to see"


def test_an_expired_token_is_refused():
    with pytest.raises(ProtocolError, match="call token expired") as refused:
        receive_start(call_token(SECRET, CALL_SID, NOW + 30), at=NOW + 30.5)
    assert refused.value.code == 1008


@pytest.mark.parametrize("forged", [
    call_token(SECRET, CALL_SID, NOW + 30).replace(str(int((NOW + 30) * 1000)), str(int((NOW + 3600) * 1000))),
    call_token(b"another-secret", CALL_SID, NOW + 30),
    call_token(SECRET, "CA" + "2" * 32, NOW + 30),  # another call's
    call_token(SECRET, CALL_SID, NOW + 30).split(".")[1],  # no expiry
    "9" * 5000 + "." + "0" * 32,  # an expiry no int() should be asked to read
    "",
])
def test_a_token_with_its_expiry_or_call_changed_is_refused(forged):
    with pytest.raises(ProtocolError, match="invalid or missing call token") as refused:
        receive_start(forged)
    assert refused.value.code == 1008
