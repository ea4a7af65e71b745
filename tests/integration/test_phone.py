"""Phone calls end to end: a real server on loopback, driven over Twilio's and the browser's wire protocols."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from callbridge.core.messages import ends_reply
from callbridge.simulator import Dtmf, Pause, SimulatedCaller, Speak, WaitForReply, webhook
from tests.integration.clients import browser_call, media_event, raw_exchange
from tests.speech import peak_correlation, silence, speech

RATE = 8000
HELLO = "Hello, this is a test call, can you hear me?"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."


async def simulate(server, script, **kw):
    return await SimulatedCaller(server.url, script, **kw).run()


async def test_echo_call_over_twilio(echo_server):
    said = speech(HELLO, RATE)
    report = await simulate(echo_server, [Pause(0.3), Speak(said), WaitForReply("heard")])
    heard = report.heard_audio
    assert report.close_code == 1000
    assert len(report.reply_starts) == 1
    # The echo is the caller's turn: same speech after alignment, as long as the turn (+ 200 ms pre-roll).
    assert peak_correlation(heard, said) > 0.9
    assert abs(len(heard) / RATE - (len(said) / RATE + 0.2)) < 0.15
    # Every mark echoed back by the caller once heard; one of them ends the reply (the others are its resume
    # points, one every 0.5 s: callbridge.core.playback).
    assert report.marks_received == report.marks_echoed
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1
    assert len(report.marks_echoed) - 1 == int((len(heard) / RATE - 0.001) // 0.5)
    assert report.stall_seconds == 0
    # Paced in real time with a small lead (60 ms by default), not sent as one blob.
    assert report.max_buffered_seconds < 0.2
    latency = report.turn_latencies()[0]
    # PAUSE_MS=512 after the true end of speech, give or take Silero's hangover (see test_turns).
    assert 0.512 - 0.064 <= latency < 2.0
    assert "ended: 1 turns" in echo_server.logs()


async def test_barge_in_clears_the_reply(echo_server):
    story, interrupt = speech(STORY, RATE), speech(INTERRUPT, RATE)
    report = await simulate(echo_server, [
        Speak(story), WaitForReply("start"), Pause(1.0), Speak(interrupt), WaitForReply("heard"),
    ])
    assert len(report.clears) == 1
    onset = report.speech_starts[1]
    clear_delay = report.clears[0] - onset
    # Speech start needs 192 ms of speech; the clear follows within a few windows of that.
    assert 0.19 <= clear_delay < 0.6, clear_delay
    # The first reply stopped: far less of it arrived than the story's length, and the second reply came.
    first_reply_audio = report.received_samples - len(interrupt) - 0.2 * RATE
    assert first_reply_audio < len(story) * 0.8
    assert len(report.reply_starts) == 2
    assert peak_correlation(report.heard_audio[-len(interrupt) - 1600 :], interrupt) > 0.9


async def test_dtmf_reaches_the_bot_and_the_bot_hangs_up_after_its_last_words(server_factory):
    server = server_factory(bot="tests.sample_bots:KeypadBot")
    report = await simulate(server, [Pause(0.2), Dtmf("2"), WaitForReply("heard"), Dtmf("#"), Pause(5.0)],
                            hangup_when_done=False)
    # Digit 2 -> 300 ms beep; '#' -> 500 ms goodbye, then the server closes the socket.
    assert report.reply_seconds == pytest.approx(0.8, abs=0.05)
    assert report.close_code == 1000
    assert len(report.marks_echoed) == 2
    hangup = next(t for t, kind, _ in report.events if kind == "mark_echo" and t > report.reply_starts[1])
    assert hangup - report.reply_starts[1] >= 0.45, "the goodbye was heard before the hang-up"


async def test_stop_frees_the_slot(server_factory):
    server = server_factory(concurrency_limit=1)
    for _ in range(2):
        report = await simulate(server, [Speak(speech(HELLO, RATE)), WaitForReply("heard")])
        assert not report.rejected and len(report.reply_starts) == 1
    with urllib.request.urlopen(server.url + "/readyz") as response:
        assert json.load(response)["calls"] == 0


def post_webhook(url: str, params: dict[str, str], signature: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_twilio_signatures_are_checked(server_factory):
    token = "test-auth-token-123"
    server = server_factory(twilio_auth_token=token, public_url="http://127.0.0.1:{port}")
    public = server.url
    params = {"CallSid": "CA" + "1" * 32, "From": "+15550001111", "To": "+15550002222"}
    url = public + "/telephone/incoming"
    good = RequestValidator(token).compute_signature(url, params)
    status, twiml = post_webhook(url, params, good)
    assert status == 200
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"ws://127.0.0.1:{server.port}/telephone/handler"
    names = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert names["From"] == "+15550001111" and names["To"] == "+15550002222"
    assert re.fullmatch(r"[0-9]+\.[0-9a-f]{32}", names["token"]), "an expiry and an HMAC"
    assert post_webhook(url, params, "forged" + good[6:])[0] == 403
    assert post_webhook(url, params, None)[0] == 403
    assert post_webhook(url, {**params, "From": "+19990000000"}, good)[0] == 403  # tampered body
    # The stream's upgrade is signed too: unsigned -> closed with 1008; the signed simulator gets its echo.
    _, code = await raw_exchange(server.url.replace("http", "ws") + "/telephone/handler", [])
    assert code == 1008
    report = await simulate(server, [Speak(speech(HELLO, RATE)), WaitForReply("heard")], auth_token=token,
                            public_url=public)
    assert len(report.reply_starts) == 1


def test_twiml_has_no_query_string_and_is_valid(echo_server):
    stream_url, params = webhook(echo_server.url)
    assert "?" not in stream_url and stream_url.endswith("/telephone/handler")
    assert set(params) == {"token", "From", "To", "CallSid"}


async def test_browser_websocket_echoes(echo_server):
    said = speech(HELLO, RATE)
    result = await browser_call(echo_server.url, "browser-echo-1", np.concatenate([said, silence(1.0, RATE)]))
    assert result.logs[:3] == ["started_talking", "pause_detected", "response_starting"]
    assert result.logs[-1] == "playback_finished"
    assert peak_correlation(result.reply, said) > 0.9
    assert abs(len(result.reply) / RATE - (len(said) / RATE + 0.2)) < 0.15
    assert result.close_code == 1000


async def test_browser_ping_pong(echo_server):
    url = echo_server.url.replace("http", "ws") + "/websocket/offer"
    received, code = await raw_exchange(url, [json.dumps({"event": "start", "websocket_id": "pinger"}),
                                              json.dumps({"event": "ping"}), json.dumps({"event": "stop"})])
    assert '{"event":"pong"}' in received and code == 1000


def twilio_start(stream_url_params: dict[str, str]) -> str:
    call_sid = stream_url_params["CallSid"]
    custom = {k: v for k, v in stream_url_params.items() if k != "CallSid"}
    return json.dumps({"event": "start", "streamSid": "MZbad", "start": {
        "streamSid": "MZbad" + call_sid[-6:], "callSid": call_sid, "customParameters": custom}})


BIG = "x" * 70000
BROWSER_BAD = {
    "not json": (["{nope"], 1007),
    "binary frame": ([b"\x00\x01"], 1003),
    "media before start": ([media_event(np.zeros(160, np.int16))], 1008),
    "missing websocket_id": ([json.dumps({"event": "start"})], 1007),
    "bad base64": ([json.dumps({"event": "start", "websocket_id": "bad-b64"}),
                    json.dumps({"event": "media", "media": {"payload": "***"}})], 1007),
    "missing payload": ([json.dumps({"event": "start", "websocket_id": "no-payload"}),
                         json.dumps({"event": "media", "media": {}})], 1007),
    "unknown event": ([json.dumps({"event": "start", "websocket_id": "unknown-ev"}),
                       json.dumps({"event": "dance"})], 1007),
    "oversized": ([json.dumps({"event": "start", "websocket_id": "too-big"}),
                   json.dumps({"event": "media", "media": {"payload": BIG}})], 1009),
    "array": (["[1, 2]"], 1007),
}


async def test_bad_input_never_disturbs_a_healthy_call(echo_server):
    said = speech(STORY, RATE)
    healthy = asyncio.create_task(simulate(echo_server, [Speak(said), WaitForReply("heard")]))
    await asyncio.sleep(0.5)
    browser_url = echo_server.url.replace("http", "ws") + "/websocket/offer"
    for name, (messages, expected_code) in BROWSER_BAD.items():
        received, code = await raw_exchange(browser_url, messages)
        assert code == expected_code, name
        errors = [json.loads(r) for r in received if r.startswith('{"type": "error"')]
        assert errors and errors[0]["data"], f"{name}: the client is told what was wrong"

    twilio_url = echo_server.url.replace("http", "ws") + "/telephone/handler"
    _, params = webhook(echo_server.url)
    good_start = twilio_start(params)
    twilio_bad = {
        "not json": (["{nope"], 1007),
        "binary": ([b"\x00"], 1003),
        "media before start": ([media_event(np.zeros(160, np.int16))], 1008),
        "forged token": ([twilio_start({**params, "token": "0" * 32})], 1008),
        "start without callSid": ([json.dumps({"event": "start", "start": {"streamSid": "MZx"}})], 1007),
        "bad base64": ([good_start, json.dumps({"event": "media", "media": {"payload": "@@"}})], 1007),
        "unknown event": ([twilio_start(webhook(echo_server.url)[1]), json.dumps({"event": "dance"})], 1007),
        "oversized": ([BIG], 1009),
    }
    for media_format in ([1], "audio/x-mulaw", 8000, True):
        start = json.loads(twilio_start(webhook(echo_server.url)[1]))
        start["start"]["mediaFormat"] = media_format
        twilio_bad[f"mediaFormat {media_format!r}"] = ([json.dumps(start)], 1007)
    for name, (messages, expected_code) in twilio_bad.items():
        received, code = await raw_exchange(twilio_url, messages)
        assert code == expected_code, name
        assert not any('"type"' in r for r in received), "only Twilio's own messages on the Twilio socket"

    report = await healthy
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert report.stall_seconds == 0, f"stalled {report.stall_seconds * 1000:.0f} ms of {report.reply_seconds:.2f} s"
    assert len(report.reply_starts) == 1
    with urllib.request.urlopen(echo_server.url + "/readyz") as response:
        assert json.load(response)["calls"] == 0, "every bad socket freed its slot"


@pytest.mark.parametrize("bad, reason", [
    (json.dumps({"event": "media", "media": {"payload": "@@"}}), "base64"),
    (json.dumps({"event": "media", "media": {}}), "media.payload"),
    ('{"event": "media", "media": {"payload": ', "JSON"),
])
async def test_bad_media_mid_call_gets_the_clear_error(echo_server, bad, reason):
    """Mid-call, media is fed to the call as it arrives (not through the reader task); a bad media message
    there still closes the socket with the reader's code and reason, after the good media before it."""
    _, params = webhook(echo_server.url)
    twilio_url = echo_server.url.replace("http", "ws") + "/telephone/handler"
    frame = media_event(speech(HELLO, RATE)[:160])
    async with connect(twilio_url) as ws:
        await ws.send(twilio_start(params))
        for _ in range(25):
            await ws.send(frame)
            await asyncio.sleep(0.02)
        await ws.send(bad)
        await ws.send(frame)  # after the bad one: never read
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1007
    assert ws.close_reason and reason in ws.close_reason, ws.close_reason
    assert "1007" in echo_server.logs()


async def test_concurrency_limit_over_any_mix_of_sockets(server_factory):
    server = server_factory(concurrency_limit=2)
    browser_url = server.url.replace("http", "ws") + "/websocket/offer"
    twilio_url = server.url.replace("http", "ws") + "/telephone/handler"
    _, spare_params = webhook(server.url)  # a token issued while there was room
    holders = [
        asyncio.create_task(simulate(server, [Pause(3.0)])),
        asyncio.create_task(browser_call(server.url, "holder", silence(0.1, RATE), until="never", timeout=3.0)),
    ]
    await asyncio.sleep(1.0)
    expected = {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
    received, code = await raw_exchange(browser_url, [json.dumps({"event": "start", "websocket_id": "third"})])
    assert json.loads(received[0]) == expected and code == 1013
    received, code = await raw_exchange(twilio_url, [twilio_start(spare_params)])
    assert json.loads(received[0]) == expected and code == 1013
    with pytest.raises(RuntimeError, match="rejected"):
        webhook(server.url)
    await asyncio.gather(*holders, return_exceptions=True)


@pytest.mark.parametrize("transport", ["twilio", "websocket"])
async def test_a_dropped_socket_ends_the_call_and_frees_everything(server_factory, transport):
    server = server_factory(bot="tests.sample_bots:Monologue", concurrency_limit=1)
    said = np.concatenate([speech(HELLO, RATE), silence(1.0, RATE)])
    if transport == "twilio":
        caller = SimulatedCaller(server.url, [Speak(said), WaitForReply("start"), Pause(0.5)],
                                 hangup_when_done=False)
        task = asyncio.create_task(caller.run())
        while not caller.report.reply_starts:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await caller.ws.close()  # no stop: the line just drops
        await asyncio.gather(task, return_exceptions=True)
        call_id = caller.stream_sid
    else:
        call_id = "dropper"
        result = await browser_call(server.url, call_id, said, until="response_starting", timeout=10, drop=True)
        assert result.logs[-1] == "response_starting"
    for _ in range(50):
        if f"call {call_id} ended" in server.logs():  # logged after the bot is closed and the slot freed
            break
        await asyncio.sleep(0.1)
    assert f"monologue generator closed for {call_id}" in server.logs()
    assert f"call {call_id} ended" in server.logs()
    with urllib.request.urlopen(server.url + "/readyz") as response:
        assert json.load(response)["calls"] == 0


async def test_a_duplicate_browser_id_is_refused(echo_server):
    url = echo_server.url.replace("http", "ws") + "/websocket/offer"
    holder = asyncio.create_task(browser_call(echo_server.url, "twin", silence(0.1, RATE), until="never", timeout=2))
    await asyncio.sleep(0.5)
    received, code = await raw_exchange(url, [json.dumps({"event": "start", "websocket_id": "twin"})])
    assert json.loads(received[0]) == {"status": "failed", "meta": {"error": "connection_already_exists"}}
    assert code == 1008
    result = await holder
    assert result.close_code == 1000, "the first call with that id is untouched"


async def test_a_bot_blocking_the_event_loop_is_named_in_the_log(server_factory):
    server = server_factory(bot="tests.sample_bots:BlockingBot")
    caller = SimulatedCaller(server.url, [Pause(0.3), Speak(speech(HELLO, RATE)), WaitForReply("heard")])
    report = await caller.run()
    assert report.reply_starts, "the call still gets its reply"
    for _ in range(50):
        if "event loop has been blocked" in server.logs():
            break
        await asyncio.sleep(0.1)
    line = next(line for line in server.logs().splitlines() if "event loop has been blocked" in line)
    assert "reply (" in line and "sample_bots.py" in line, line
    assert f"in call {caller.stream_sid}" in line, line


async def test_a_star_inputs_handler_is_answered_without_the_input_wait(server_factory):
    """FastRTC's `def handler(audio, *inputs)`: on the phone no set_input can come, so no turn waits for one."""
    server = server_factory(bot="tests.sample_bots:star_inputs_handler", input_timeout_seconds=3)
    said = speech(HELLO, RATE)
    report = await simulate(server, [Pause(0.3), Speak(said), WaitForReply("heard")])
    (latency,) = report.turn_latencies()
    assert latency < 1.5, f"answered {latency:.2f} s after the speech: the 3 s input wait was not skipped"


async def test_bot_audio_at_22050_and_44100_hz_is_heard_on_the_phone(server_factory):
    server = server_factory(bot="tests.sample_bots:TtsRatesBot")
    report = await simulate(server, [Pause(0.3), Speak(speech(HELLO, RATE)), WaitForReply("heard")])
    heard = report.heard_audio.astype(np.float32)
    assert len(heard) >= 0.95 * RATE, f"heard {len(heard) / RATE:.2f} s of the 1 s reply"
    start = int(np.argmax(np.abs(heard) > 1000))
    for offset, hz in ((0.1, 440.0), (0.6, 880.0)):
        piece = heard[start + int(offset * RATE) : start + int((offset + 0.3) * RATE)]
        spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
        assert abs(np.argmax(spectrum) * RATE / len(piece) - hz) < 15, f"the {hz:.0f} Hz part kept its pitch"
