"""Telnyx calls end to end: a real server on loopback, driven over Telnyx's published wire protocol (a signed
TeXML webhook, then the media streaming socket) by a simulated Telnyx cloud."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect

from callbridge.core.messages import ends_reply
from callbridge.simulator import Dtmf, Pause, SimulatedCaller, Speak, WaitForReply
from tests.integration.clients import raw_exchange
from tests.speech import peak_correlation, speech
from tests.telnyx_caller import (
    TelnyxCaller,
    call_form,
    post_incoming,
    public_key_base64,
    signed_headers,
    start_message,
    stop_message,
    telnyx_webhook,
)

RATE = 8000
HELLO = "Hello, this is a test call, can you hear me?"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."
KEY = Ed25519PrivateKey.generate()  # the "account's" key pair: the server gets the public half


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(concurrency_limit=10, telnyx_public_key=public_key_base64(KEY),
                          public_url="http://127.0.0.1:{port}")


def handler_url(server) -> str:
    return server.url.replace("http", "ws") + "/telnyx/handler"


async def test_echo_round_trip_with_playback_tracked_by_marks(server):
    said = speech(HELLO, RATE)
    caller = TelnyxCaller(server.url, [Pause(0.3), Speak(said), WaitForReply("heard")], KEY)
    report = await caller.run()
    heard = report.heard_audio
    assert report.close_code == 1000 and not report.rejected
    assert len(report.reply_starts) == 1
    assert peak_correlation(heard, said) > 0.9
    assert abs(len(heard) / RATE - (len(said) / RATE + 0.2)) < 0.15
    # Every mark echoed back once heard: one ends the reply, the others are its resume points, one every 0.5 s.
    assert report.marks_received == report.marks_echoed
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1
    assert len(report.marks_echoed) - 1 == int((len(heard) / RATE - 0.001) // 0.5)
    assert report.stall_seconds == 0 and report.max_buffered_seconds < 0.2
    assert 0.512 - 0.064 <= report.turn_latencies()[0] < 2.0
    await server.wait_for_log(f"call {caller.stream_sid} ended: 1 turns")
    assert f"call {caller.stream_sid} started on telnyx" in server.logs()


async def test_dtmf_reaches_the_bot_which_hangs_up_once_its_goodbye_is_heard(server_factory):
    server = server_factory(bot="tests.sample_bots:KeypadBot", telnyx_public_key=public_key_base64(KEY))
    report = await TelnyxCaller(server.url, [Pause(0.2), Dtmf("2"), WaitForReply("heard"), Dtmf("#"), Pause(5.0)],
                                KEY, hangup_when_done=False).run()
    # Digit 2 -> 300 ms beep; '#' -> 500 ms goodbye, then the server closes the socket: only once the goodbye's
    # mark has come back, so playback tracking reached the call.
    assert report.reply_seconds == pytest.approx(0.8, abs=0.05)
    assert report.close_code == 1000
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 2
    hangup = next(t for t, kind, _ in report.events if kind == "hangup")
    goodbye_heard = [t for t, kind, detail in report.events if kind == "mark_echo" and ends_reply(detail)][-1]
    assert goodbye_heard - report.reply_starts[1] >= 0.45 and hangup >= goodbye_heard


async def test_barge_in_sends_clear_and_stops_the_reply(server):
    story, interrupt = speech(STORY, RATE), speech(INTERRUPT, RATE)
    report = await TelnyxCaller(server.url, [
        Speak(story), WaitForReply("start"), Pause(1.0), Speak(interrupt), WaitForReply("heard"),
    ], KEY).run()
    assert len(report.clears) == 1
    assert 0.19 <= report.clears[0] - report.speech_starts[1] < 0.6
    assert report.received_samples - len(interrupt) - 0.2 * RATE < len(story) * 0.8
    assert len(report.reply_starts) == 2
    assert peak_correlation(report.heard_audio[-len(interrupt) - 1600:], interrupt) > 0.9
    # The cleared reply never reached its end mark (its resume points came back on `clear`); the second's came
    # back once heard.
    assert report.marks_received == report.marks_echoed
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1


def test_the_texml_asks_for_a_bidirectional_pcmu_stream(server):
    stream_url, params = telnyx_webhook(server.url, KEY, From="+15550001111", To="+15550002222")
    assert stream_url == f"ws://127.0.0.1:{server.port}/telnyx/handler"
    assert set(params) == {"token", "From", "To", "CallSid"}
    assert params["From"] == "+15550001111" and params["To"] == "+15550002222"
    form = call_form()
    body = urllib.parse.urlencode(form).encode()
    _, texml = post_incoming(server.url, body, signed_headers(KEY, body))
    stream = ET.fromstring(texml).find("./Connect/Stream")
    assert stream is not None
    assert (stream.get("bidirectionalMode"), stream.get("bidirectionalCodec"), stream.get("codec")) == \
        ("rtp", "PCMU", "PCMU")


@pytest.mark.parametrize("case", ["forged", "tampered", "stale", "future", "unsigned", "not base64"])
def test_webhooks_not_signed_by_the_account_are_refused(server, case):
    form = call_form()
    body = urllib.parse.urlencode(form).encode()
    now = int(time.time())
    headers = {
        "forged": signed_headers(Ed25519PrivateKey.generate(), body),
        "tampered": signed_headers(KEY, body.replace(b"%2B15550100001", b"%2B19990000000")),
        "stale": signed_headers(KEY, body, now - 301),
        "future": signed_headers(KEY, body, now + 301),
        "unsigned": {},
        "not base64": {**signed_headers(KEY, body), "telnyx-signature-ed25519": "!!not-base64!!"},
    }[case]
    assert post_incoming(server.url, body, headers)[0] == 403
    # The same body, freshly signed by the account, is answered (a stale signature within 5 minutes is not stale).
    assert post_incoming(server.url, body, signed_headers(KEY, body, now - 240))[0] == 200
    assert "Telnyx webhook refused" in server.logs()


async def test_a_twilio_call_and_a_telnyx_call_share_one_limit(server_factory):
    shared = server_factory(concurrency_limit=1, telnyx_public_key=public_key_base64(KEY))
    twilio_call = asyncio.create_task(SimulatedCaller(shared.url, [Pause(2.5)]).run())
    await asyncio.sleep(1.0)
    # The webhook rejects the Telnyx call as busy while the Twilio call holds the only slot...
    refused = await TelnyxCaller(shared.url, [Pause(0.2)], KEY).run()
    assert "call rejected" in refused.rejected and 'Reject reason="busy"' in refused.rejected
    # ... and a Telnyx stream announced before the slot was taken is refused by the limit when it starts.
    await twilio_call
    _, params = await asyncio.to_thread(telnyx_webhook, shared.url, KEY)
    call_control_id = params.pop("CallSid")
    holder = asyncio.create_task(SimulatedCaller(shared.url, [Pause(2.0)]).run())
    await asyncio.sleep(1.0)
    received, code = await raw_exchange(handler_url(shared), [start_message("late-stream", call_control_id, params)])
    await holder
    assert code == 1013
    assert json.loads(received[0])["meta"] == {"error": "concurrency_limit_reached", "limit": 1}
    # The other way round: a Telnyx call holds the slot, and Twilio's webhook answers busy.
    telnyx_call = asyncio.create_task(TelnyxCaller(shared.url, [Pause(2.0)], KEY).run())
    await asyncio.sleep(1.0)
    twilio_refused = await SimulatedCaller(shared.url, [Pause(0.2)]).run()
    assert "call rejected" in twilio_refused.rejected
    assert (await telnyx_call).close_code == 1000


def bad_inputs(params: dict[str, str], call_control_id: str) -> dict[str, tuple[list[str | bytes], int, str]]:
    """Each bad opening of a Telnyx socket: its messages, the close code and a word of the reason."""
    start = start_message("bad-stream", call_control_id, params)
    return {
        "not json": (["{nope"], 1007, "not valid JSON"),
        "binary": ([b"\x00\x01"], 1003, "binary frames"),
        "too big": ([json.dumps({"event": "connected", "pad": "x" * 70_000})], 1009, "exceeds"),
        "media before start": ([json.dumps({"event": "media", "media": {"payload": ""}})], 1008, "before start"),
        "forged token": ([start_message("bad-stream", call_control_id, {**params, "token": "1.0" + "0" * 31})],
                         1008, "invalid or missing call token"),
        "token of another call": ([start_message("bad-stream", "v3:another-call", params)], 1008,
                                  "invalid or missing call token"),
        "A-law": ([start_message("bad-stream", call_control_id, params, encoding="PCMA")], 1007, "media_format"),
        "bad base64": ([start, json.dumps({"event": "media", "stream_id": "bad-stream",
                                           "media": {"track": "inbound", "payload": "@@@"}})], 1007, "base64"),
        "second start": ([start, start], 1008, "unexpected 'start'"),
        "unknown event": ([start, json.dumps({"event": "dance", "stream_id": "bad-stream"})], 1007, "unknown event"),
    }


async def close_of(url: str, messages: list[str | bytes]) -> tuple[int | None, str]:
    async with connect(url, max_size=None) as ws:
        for message in messages:
            await ws.send(message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 5.0)
    return ws.close_code, ws.close_reason or ""


async def test_bad_input_gets_a_clear_close_and_a_healthy_call_beside_it_is_unaffected(server):
    said = speech(STORY, RATE)
    healthy = asyncio.create_task(TelnyxCaller(server.url, [Speak(said), WaitForReply("heard")], KEY).run())
    await asyncio.sleep(0.5)
    closes = {}
    for case in bad_inputs({}, ""):
        _, params = await asyncio.to_thread(telnyx_webhook, server.url, KEY)  # a fresh token for each
        call_control_id = params.pop("CallSid")
        messages, _, reason = bad_inputs(params, call_control_id)[case]
        closed_with, closed_because = await close_of(handler_url(server), messages)
        closes[case] = (closed_with, reason in closed_because)
    assert closes == {case: (code, True) for case, (_, code, _) in bad_inputs({}, "").items()}
    report = await healthy
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert report.stall_seconds == 0 and len(report.reply_starts) == 1 and report.close_code == 1000


async def test_a_token_opens_one_stream(server):
    _, params = await asyncio.to_thread(telnyx_webhook, server.url, KEY)
    call_control_id = params.pop("CallSid")
    _, code = await raw_exchange(handler_url(server), [start_message("first-stream", call_control_id, params),
                                                       stop_message("first-stream", call_control_id)])
    assert code == 1000
    async with connect(handler_url(server)) as ws:
        await ws.send(start_message("replayed-stream", call_control_id, params))
        await asyncio.wait_for(ws.wait_closed(), 5.0)
    assert (ws.close_code, ws.close_reason) == (1008, "call token already used: it opens one stream")
