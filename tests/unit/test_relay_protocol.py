"""ConversationRelay's wire protocol without sockets: Twilio's messages as events, the order rules, the token."""

from __future__ import annotations

import json

import pytest

from callbridge.transports.media import Dtmf, ProtocolError, Start
from callbridge.transports.relay import Interrupt, Prompt, RelayProtocol, Reported
from callbridge.transports.twilio import call_token

SECRET = b"relay-test-secret"
NOW = 1_800_000_000.0
CALL_SID = "CA" + "1" * 32


def setup(token: str, **extra: object) -> str:
    return json.dumps({"type": "setup", "sessionId": "VX" + "2" * 32, "callSid": CALL_SID, "from": "+15550100001",
                       "to": "+15550100002", "customParameters": {"token": token, "campaign": "spring"}, **extra})


def protocol_after_setup() -> RelayProtocol:
    protocol = RelayProtocol(SECRET, 65536, clock=lambda: NOW)
    protocol.receive(setup(call_token(SECRET, CALL_SID, NOW + 30)))
    return protocol


def test_setup_opens_the_session_with_its_parameters_and_a_claim_on_its_token():
    protocol = RelayProtocol(SECRET, 65536, clock=lambda: NOW)
    token = call_token(SECRET, CALL_SID, NOW + 30)
    event = protocol.receive(setup(token))
    parameters = {"campaign": "spring", "From": "+15550100001", "To": "+15550100002", "CallSid": CALL_SID}
    assert event == Start("VX" + "2" * 32, parameters, claim=token, claim_seconds=pytest.approx(30, abs=0.01))


@pytest.mark.parametrize(("token", "message"), [
    (call_token(SECRET, CALL_SID, NOW - 1), "call token expired 1.0 s ago"),
    (call_token(b"another secret", CALL_SID, NOW + 30), "invalid or missing call token"),
    (call_token(SECRET, "CA" + "9" * 32, NOW + 30), "invalid or missing call token"),  # another call's
    ("", "invalid or missing call token (start the call through /relay/incoming)"),
])
def test_a_token_that_is_expired_forged_or_missing_is_refused(token, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        RelayProtocol(SECRET, 65536, clock=lambda: NOW).receive(setup(token))
    assert error.value.code == 1008


def test_the_events_after_setup():
    protocol = protocol_after_setup()
    assert protocol.receive('{"type":"prompt","voicePrompt":"Hi there","lang":"en-US","last":true}') == Prompt(
        "Hi there", "en-US")
    assert protocol.receive('{"type":"prompt","voicePrompt":"Hi","last":false}') is None  # a partial prompt
    assert protocol.receive('{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":460}'
                            ) == Interrupt("Life is", 460)
    assert protocol.receive('{"type":"interrupt","utteranceUntilInterrupt":"","durationUntilInterruptMs":"80"}'
                            ) == Interrupt("", 80)
    assert protocol.receive('{"type":"dtmf","digit":"5"}') == Dtmf("5")
    assert protocol.receive('{"type":"error","description":"Invalid message received"}') == Reported(
        "Invalid message received")


@pytest.mark.parametrize(("raw", "code", "message"), [
    ('{"type":"prompt","voicePrompt":"hi"}', 1008, "'prompt' before setup"),
    ('{"event":"start"}', 1007, 'message has no "type" string'),
    (b"binary", 1003, "binary frames"),
])
def test_nothing_but_setup_comes_first(raw, code, message):
    with pytest.raises(ProtocolError, match=message) as error:
        RelayProtocol(SECRET, 65536, clock=lambda: NOW).receive(raw)
    assert error.value.code == code


@pytest.mark.parametrize(("raw", "code", "message"), [
    (setup(call_token(SECRET, CALL_SID, NOW + 30)), 1008, "unexpected 'setup' after setup"),
    ('{"type":"prompt","last":true}', 1007, "'prompt' message lacks voicePrompt"),
    ('{"type":"prompt","voicePrompt":5}', 1007, "voicePrompt must be a str"),
    ('{"type":"interrupt","utteranceUntilInterrupt":"x","durationUntilInterruptMs":-3}', 1007, "milliseconds"),
    ('{"type":"interrupt","utteranceUntilInterrupt":"x","durationUntilInterruptMs":true}', 1007, "milliseconds"),
    ('{"type":"dtmf"}', 1007, "'dtmf' message lacks digit"),
    ('{"type":"media"}', 1007, "unknown message type 'media'"),
    ("x" * 70000, 1009, "exceeds the 65536-byte limit"),
])
def test_bad_messages_after_setup_say_what_is_wrong(raw, code, message):
    with pytest.raises(ProtocolError, match=message) as error:
        protocol_after_setup().receive(raw)
    assert error.value.code == code


def test_what_goes_back_to_twilio():
    protocol = protocol_after_setup()
    assert json.loads(protocol.text("Hello", last=False)) == {"type": "text", "token": "Hello", "last": False}
    assert json.loads(protocol.text("", last=True)) == {"type": "text", "token": "", "last": True}
    assert json.loads(protocol.end('{"reasonCode":"end_call"}')) == {"type": "end",
                                                                      "handoffData": '{"reasonCode":"end_call"}'}
