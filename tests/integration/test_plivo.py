"""Plivo calls end to end: a real server on loopback, driven over Plivo's answer URL and audio stream protocol
(tests.integration.plivo_caller), beside Twilio calls on the same slots."""

from __future__ import annotations

import asyncio
import json
import uuid
import xml.etree.ElementTree as ET

import pytest
from websockets.asyncio.client import connect

from callbridge.core.messages import ends_reply
from callbridge.simulator import Dtmf, Pause, SimulatedCaller, Speak, WaitForReply, webhook
from tests.integration.clients import raw_exchange
from tests.integration.plivo_caller import ACCOUNT, PlivoCaller, answer_params, post_answer_url, start_message
from tests.speech import peak_correlation, speech

RATE = 8000
HELLO = "Hello, this is a test call, can you hear me?"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."
TOKEN = "plivo-test-auth-token"


def plivo_stream(server, **form: str) -> tuple[str, str, str]:
    """Answer a Plivo call: (socket URL, CallUUID, the Stream's extraHeaders)."""
    params = answer_params(**form)
    status, body = post_answer_url(server.url + "/plivo/incoming", params)
    assert status == 200, body
    stream = ET.fromstring(body).find("Stream")
    assert stream is not None and stream.text
    return server.url.replace("http", "ws") + "/plivo/handler", params["CallUUID"], stream.get("extraHeaders", "")


async def test_echo_call_over_plivo(echo_server):
    said = speech(HELLO, RATE)
    caller = PlivoCaller(echo_server.url, [Pause(0.3), Speak(said), WaitForReply("heard")])
    report = await caller.run()
    assert not report.rejected, report.rejected
    assert caller.stream_xml["bidirectional"] == "true" and caller.stream_xml["keepCallAlive"] == "true"
    assert caller.stream_xml["contentType"] == "audio/x-mulaw;rate=8000"
    assert len(report.reply_starts) == 1
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert abs(len(report.heard_audio) / RATE - (len(said) / RATE + 0.2)) < 0.15
    # Every checkpoint answered with playedStream once heard; one ends the reply, the others are its resume
    # points (one every 0.5 s: callbridge.core.playback).
    assert report.marks_received == report.marks_echoed
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1
    assert len(report.marks_echoed) - 1 == int((len(report.heard_audio) / RATE - 0.001) // 0.5)
    assert report.stall_seconds == 0 and report.max_buffered_seconds < 0.2
    assert 0.512 - 0.064 <= report.turn_latencies()[0] < 2.0
    await echo_server.wait_for_log(f"call {caller.stream_sid} ended: 1 turns")
    logs = echo_server.logs()
    assert f"call {caller.stream_sid} started on plivo" in logs
    assert f"plivo {caller.stream_sid}: the client closed the socket" in logs  # Plivo's hang-up: no stop


async def test_barge_in_sends_clear_audio(echo_server):
    story, interrupt = speech(STORY, RATE), speech(INTERRUPT, RATE)
    caller = PlivoCaller(echo_server.url, [
        Speak(story), WaitForReply("start"), Pause(1.0), Speak(interrupt), WaitForReply("heard"),
    ])
    report = await caller.run()
    assert len(report.clears) == 1 and caller.cleared_answered == 1
    clear_delay = report.clears[0] - report.speech_starts[1]
    assert 0.19 <= clear_delay < 0.6, clear_delay
    assert report.received_samples - len(interrupt) - 0.2 * RATE < len(story) * 0.8, "the first reply stopped"
    assert len(report.reply_starts) == 2
    assert peak_correlation(report.heard_audio[-len(interrupt) - 1600 :], interrupt) > 0.9
    # Plivo answers only the checkpoints whose audio played (the caller drops those pending at the clear): the
    # call needs no answer for the cleared reply, and tracks the second one to its end.
    reply_ends = [name for name in report.marks_received if ends_reply(name)]
    assert [name for name in report.marks_echoed if ends_reply(name)] == reply_ends[-1:]


async def test_hang_up_waits_for_played_stream(server_factory):
    server = server_factory(bot="tests.sample_bots:KeypadBot")
    caller = PlivoCaller(server.url, [Pause(0.2), Dtmf("2"), WaitForReply("heard"), Dtmf("#"), Pause(5.0)],
                         hangup_when_done=False)
    report = await caller.run()
    # Digit 2 -> 300 ms beep; '#' -> 500 ms goodbye, then the server closes the socket: the call ends.
    assert report.reply_seconds == pytest.approx(0.8, abs=0.05)
    assert report.close_code == 1000
    assert len(report.marks_echoed) == 2
    closed = next(t for t, kind, _ in report.events if kind == "hangup")
    assert closed - report.reply_starts[1] >= 0.45, "the goodbye was heard before the hang-up"


async def test_plivo_signatures_are_checked(server_factory):
    server = server_factory(plivo_auth_token=TOKEN, plivo_auth_id=ACCOUNT, public_url="http://127.0.0.1:{port}")
    url = server.url + "/plivo/incoming"
    params = answer_params()
    status, body = post_answer_url(url, params, TOKEN)
    assert status == 200, body
    stream = ET.fromstring(body).find("Stream")
    assert stream is not None and stream.text == f"ws://127.0.0.1:{server.port}/plivo/handler"
    headers = dict(item.split("=", 1) for item in stream.get("extraHeaders", "").split(","))
    assert headers["From"] == "15550100001" and headers["To"] == "15550100002"
    assert headers["token"].isalnum(), "extraHeaders take letters and digits only"
    assert post_answer_url(url, params, "another-token")[0] == 403  # forged
    assert post_answer_url(url, params)[0] == 403  # unsigned
    assert post_answer_url(url, params, TOKEN, url + "?extra=1")[0] == 403  # signed for another URL
    assert post_answer_url(url, {**params, "From": "19990000000"}, TOKEN, signed_params=params)[0] == 403  # tampered
    assert "bad or missing X-Plivo-Signature-V3" in server.logs()
    # The signed caller gets its echo; a stream claiming another account is refused.
    said = speech(HELLO, RATE)
    report = await PlivoCaller(server.url, [Speak(said), WaitForReply("heard")], auth_token=TOKEN,
                               public_url=server.url).run()
    assert len(report.reply_starts) == 1 and peak_correlation(report.heard_audio, said) > 0.9
    other = PlivoCaller(server.url, [Speak(said), WaitForReply("heard")], auth_token=TOKEN,
                        public_url=server.url, account="MA" + "Z" * 18)
    report = await other.run()
    assert report.close_code == 1008 and "another Plivo account" in report.close_reason
    assert not report.reply_starts


async def test_twilio_and_plivo_calls_share_the_concurrency_limit(server_factory):
    server = server_factory(concurrency_limit=1)
    hold = [Speak(speech(HELLO, RATE)), WaitForReply("heard"), Pause(1.5)]
    twilio_call = asyncio.create_task(SimulatedCaller(server.url, hold).run())
    await asyncio.sleep(0.8)
    status, body = post_answer_url(server.url + "/plivo/incoming", answer_params())
    assert status == 200 and ET.fromstring(body).find("Hangup").get("reason") == "busy"
    assert not (await twilio_call).rejected
    plivo_call = asyncio.create_task(PlivoCaller(server.url, hold).run())
    await asyncio.sleep(0.8)
    with pytest.raises(RuntimeError, match="call rejected"):
        webhook(server.url)
    report = await plivo_call
    assert not report.rejected and len(report.reply_starts) == 1
    assert "at capacity (1 calls, CONCURRENCY_LIMIT=1)" in server.logs()


@pytest.fixture(scope="module")
def hostile_server(server_factory):
    return server_factory(concurrency_limit=10, call_token_secret="plivo-hostile")


@pytest.fixture
async def healthy_plivo_call(hostile_server):
    """A Plivo call running while the test attacks; asserts afterwards that the caller heard its echo whole."""
    said = speech(STORY, RATE)
    call = asyncio.create_task(PlivoCaller(hostile_server.url, [Speak(said), WaitForReply("heard")]).run())
    await asyncio.sleep(0.5)
    yield
    report = await call
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert report.stall_seconds == 0 and len(report.reply_starts) == 1


def _media(stream_id: str, payload: str = "//8=") -> str:
    return json.dumps({"event": "media", "streamId": stream_id, "media": {"payload": payload}})


@pytest.mark.parametrize(("case", "code", "reason"), [
    ("binary", 1003, "binary frames"),
    ("not json", 1007, "not valid JSON"),
    ("media before start", 1008, "'media' before start"),
    ("forged token", 1008, "invalid or missing call token (start the call through /plivo/incoming)"),
    ("another call's token", 1008, "invalid or missing call token"),
    ("no token", 1008, "invalid or missing call token"),
    ("l16 audio", 1007, "unsupported mediaFormat"),
    ("bad base64", 1007, "not valid base64"),
    ("unknown event", 1007, "unknown event 'sendDTMF'"),
    ("second start", 1008, "unexpected 'start' after start"),
])
async def test_bad_input_closes_the_socket_cleanly(hostile_server, healthy_plivo_call, case, code, reason):
    ws_url, call_id, extra = plivo_stream(hostile_server)
    stream_id = str(uuid.uuid4())
    start = start_message(stream_id, call_id, extra)
    token = dict(item.split("=", 1) for item in extra.split(","))["token"]
    messages: list[str | bytes] = {
        "binary": [start, b"\x00\x01"],
        "not json": [start, "{not json"],
        "media before start": [_media(stream_id)],
        "forged token": [start_message(stream_id, call_id, extra.replace(token, token[:-3] + "000"))],
        "another call's token": [start_message(stream_id, str(uuid.uuid4()), extra)],
        "no token": [start_message(stream_id, call_id, "From=1555")],
        "l16 audio": [start.replace("audio/x-mulaw", "audio/x-l16")],
        "bad base64": [start, _media(stream_id, "not base64!")],
        "unknown event": [start, json.dumps({"event": "sendDTMF", "streamId": stream_id})],
        "second start": [start, start],
    }[case]
    _, close_code = await raw_exchange(ws_url, messages)
    assert close_code == code
    await asyncio.sleep(0.1)
    assert reason in hostile_server.logs()


async def test_a_token_opens_one_plivo_stream(hostile_server, healthy_plivo_call):
    ws_url, call_id, extra = plivo_stream(hostile_server)
    first = str(uuid.uuid4())
    async with connect(ws_url) as ws:
        await ws.send(start_message(first, call_id, extra))
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.2)
    assert f"call {first} started on plivo" in hostile_server.logs()
    replay = str(uuid.uuid4())
    async with connect(ws_url) as ws:
        await ws.send(start_message(replay, call_id, extra))
        await asyncio.wait_for(ws.wait_closed(), 5.0)
    assert (ws.close_code, ws.close_reason) == (1008, "call token already used: it opens one stream")


async def test_an_uh_huh_over_a_reply_resumes_it_from_the_last_played_checkpoint(echo_server):
    """BACKCHANNEL_RESUME over Plivo: the reply resumes from the last checkpoint Plivo said was played (it never
    answers the ones `clearAudio` dropped), so the caller hears all of the echo, repeating at most 0.5 s."""
    story = speech(STORY, RATE)
    caller = PlivoCaller(echo_server.url, [
        Pause(0.3), Speak(story), WaitForReply("start"), Pause(2.0), Speak(speech("Uh-huh.", RATE)),
        WaitForReply("heard", timeout=20)])
    report = await caller.run()
    assert len(report.clears) == 1 and caller.cleared_answered == 1
    echo = len(story) / RATE + 0.2  # the turn and its pre-roll
    heard = report.heard_audio
    assert echo - 0.1 <= len(heard) / RATE <= echo + 0.5 + 0.1, (len(heard) / RATE, echo)
    assert peak_correlation(heard[-4 * RATE :], story[-3 * RATE :]) > 0.9, "the resumed audio goes on to the end"
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1, report.marks_echoed
    await echo_server.wait_for_log(f"call {caller.stream_sid} ended: 2 turns, 1 barge-ins (1 resumed)")
