"""Outbound calls and transfers over Twilio, end to end: a real server on loopback whose REST requests go to a
local server speaking Twilio's REST wire format (tests/integration/fake_twilio.py), and a simulated Twilio
that answers the call (the webhook at the Url it was given) and streams it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.message import Message
from typing import Any

import numpy as np
import pytest

from callbridge.simulator import Pause, SimulatedCaller, WaitForReply, webhook
from tests.integration.clients import browser_call
from tests.integration.conftest import ROOT
from tests.integration.fake_twilio import Answer, FakeTwilio, twilio_error
from tests.processes import free_port

API_TOKEN = "test-api-token"
FROM = "+15550199"
CALLEE = "+15550100"
DESK = "+15550111"  # where tests.sample_bots:Receptionist transfers
RATE = 8000


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(twilio: FakeTwilio) -> FakeTwilio:
    twilio.requests.clear()
    twilio.answers.clear()
    return twilio


@pytest.fixture(scope="module")
def server(server_factory, twilio: FakeTwilio):
    return server_factory(bot="tests.sample_bots:Receptionist", api_token=API_TOKEN, public_url="http://127.0.0.1:{port}",
                          twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                          twilio_api_url=twilio.url, twilio_from_number=FROM, twilio_api_timeout_seconds=1)


def post(url: str, body: bytes | str | Any, *, token: str | None = API_TOKEN,
         content_type: str = "application/json") -> tuple[int, dict[str, Any], Message]:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + "/calls", data, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers


def calls_in_progress(server) -> int:
    with urllib.request.urlopen(server.url + "/readyz", timeout=5) as response:
        return json.load(response)["calls"]


async def test_an_outbound_call_is_placed_answered_streamed_and_transferred_once_its_words_are_heard(server, fake):
    status, body, _ = post(server.url, {"to": CALLEE, "parameters": {"customer": "Ada Lovelace"},
                                        "machine_detection": "Enable"})
    assert status == 201, body
    call_sid = body["call_sid"]
    (placed,) = fake.requests
    assert placed.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
    assert placed.auth == (fake.account_sid, fake.auth_token)
    answer_url = f"{server.url}/telephone/outbound?customer=Ada+Lovelace"
    assert placed.form == {"To": CALLEE, "From": FROM, "Url": answer_url, "Method": "POST",
                           "MachineDetection": "Enable"}

    # Twilio, once the callee answers: the signed webhook at that Url (with its AMD verdict), then the stream.
    caller = SimulatedCaller(server.url, [WaitForReply("heard"), Pause(1.0)], auth_token=fake.auth_token,
                             webhook_path=answer_url.removeprefix(server.url),
                             webhook_form={"CallSid": call_sid, "From": FROM, "To": CALLEE,
                                           "Direction": "outbound-api", "AnsweredBy": "machine_start"})
    report = await caller.run()
    assert not report.rejected, report.rejected
    assert report.reply_seconds == pytest.approx(0.5, abs=0.03), "the greeting before the transfer was heard"
    assert ("receptionist: outbound call, answered by 'machine_start', can transfer: True, parameters "
            f"{{'CallSid': '{call_sid}', 'From': '{FROM}', 'To': '{CALLEE}', 'customer': 'Ada Lovelace'}}"
            ) in server.logs()

    assert fake.requests[0] == placed
    redirect = fake.requests[1]
    assert len(fake.requests) == 2
    assert redirect.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls/{call_sid}.json"
    assert redirect.auth == (fake.account_sid, fake.auth_token)
    dial = ET.fromstring(redirect.form["Twiml"]).find("Dial")
    assert dial is not None and dial.text == DESK
    heard = next(t for t, kind, _ in report.events if kind == "mark_echo")
    assert redirect.at - caller._t0 >= heard, "the transfer waited for the words before it to be heard"
    assert "transferred; the stream ends" in server.logs()
    assert report.close_code == 1000


async def test_a_stream_twilio_ends_before_it_answers_the_redirect_still_sees_the_transfer_through(server, fake):
    call_sid = "CA" + "7" * 32
    fake.answers.append(Answer(200, {"sid": call_sid, "status": "in-progress"}, delay=0.6))
    caller = SimulatedCaller(server.url, [WaitForReply("heard"), Pause(0.2)], auth_token=fake.auth_token,
                             webhook_path="/telephone/outbound", webhook_form={"CallSid": call_sid})
    report = await caller.run()
    assert report.close_code == 1000 and len(fake.requests) == 1
    stream = caller.stream_sid
    deadline = time.monotonic() + 5
    while f"call {stream} ended" not in server.logs() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    logs = server.logs()
    stopped, transferred = logs.index(f"twilio {stream}: stop"), logs.index(f"twilio {stream}: transferred")
    assert stopped < transferred < logs.index(f"call {stream} ended")


async def test_a_transfer_twilio_refuses_goes_back_to_the_bot_and_the_caller_hears_it(server, fake):
    fake.answers.append(twilio_error(400, 21220, "Call is not in-progress. Cannot redirect."))
    call_sid = "CA" + "5" * 32
    caller = SimulatedCaller(server.url, [WaitForReply("heard"), Pause(0.3), WaitForReply("heard"), Pause(0.3)],
                             auth_token=fake.auth_token,
                             webhook_path="/telephone/outbound", webhook_form={"CallSid": call_sid})
    report = await caller.run()
    assert [r.path.endswith(f"/Calls/{call_sid}.json") for r in fake.requests] == [True]
    # The greeting (0.5 s), then the bot's answer to the refusal (0.3 s): the caller is still with the bot.
    assert [round(seconds, 1) for seconds in report.reply_heard] == [0.5, 0.3]
    assert "transfer failed: Twilio answered 400: Unable to update record: Call is not in-progress" in server.logs()
    assert calls_in_progress(server) == 0


async def test_a_browser_call_cannot_be_transferred_the_bot_is_told_and_the_caller_hears_it(server, fake):
    result = await browser_call(server.url, "browser-transfer", np.zeros(RATE // 2, np.int16), pace=0.02,
                                until="never", timeout=2.5)
    assert fake.requests == [], "no REST request for a call that is not on a phone line"
    warnings = [m["data"] for m in result.messages if m["type"] == "warning"]
    assert warnings == ["transfer failed: this line cannot be transferred"]
    # The greeting, then the bot's 880 Hz answer about the refusal.
    assert len(result.reply) == pytest.approx(0.8 * RATE, abs=0.05 * RATE)


@pytest.mark.parametrize(("body", "token", "content_type", "status", "error"), [
    ({"to": CALLEE}, None, "application/json", 401, "Authorization: Bearer"),
    ({"to": CALLEE}, "wrong-token", "application/json", 401, "Authorization: Bearer"),
    ('{"to": "+15550100"', API_TOKEN, "application/json", 400, "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, API_TOKEN, "application/json", 413, "at most 8192 bytes"),
    ({"to": CALLEE, "note": "x" * 20_000}, API_TOKEN, "application/json", 413, "at most 8192 bytes"),
    ('{"to": "+15550100"}', API_TOKEN, "text/plain", 415, "Content-Type: application/json"),
    (["+15550100"], API_TOKEN, "application/json", 422, "a JSON object"),
    ({"to": "555-0100"}, API_TOKEN, "application/json", 422, '"to" must be an E.164'),
    ({"to": "+0123"}, API_TOKEN, "application/json", 422, '"to" must be an E.164'),
    ({"to": 15550100}, API_TOKEN, "application/json", 422, '"to" must be an E.164'),
    ({"to": CALLEE, "from": "me"}, API_TOKEN, "application/json", 422, '"from" must be an E.164'),
    ({"to": CALLEE, "url": "http://evil.example"}, API_TOKEN, "application/json", 422, "unknown fields ['url']"),
    ({"to": CALLEE, "parameters": {"token": "x"}}, API_TOKEN, "application/json", 422, "parameter name 'token'"),
    ({"to": CALLEE, "parameters": {"n": 1}}, API_TOKEN, "application/json", 422, "an object of strings"),
    ({"to": CALLEE, "parameters": {"n": "x" * 3000}}, API_TOKEN, "application/json", 422, "at most 2048"),
    ({"to": CALLEE, "machine_detection": "yes"}, API_TOKEN, "application/json", 422, "machine_detection"),
])
def test_bad_requests_get_a_clear_error_and_reach_no_twilio(server, fake, body, token, content_type, status, error):
    got, answer, headers = post(server.url, body, token=token, content_type=content_type)
    assert got == status, answer
    assert answer["status"] == "failed" and error in answer["meta"]["error"], answer
    if status == 401:
        assert headers.get("WWW-Authenticate") == "Bearer"
    assert fake.requests == []


@pytest.mark.parametrize(("answer", "status", "said"), [
    (twilio_error(400, 21211, "Invalid 'To' Phone Number: +15550100"), 502,
     "Twilio answered 400: Unable to create record: Invalid 'To' Phone Number"),
    (twilio_error(401, 20003, "Authenticate"), 502, "Twilio answered 401"),
    (Answer(500, "<html>Internal Server Error</html>"), 502, "Twilio answered 500"),
    (Answer(201, "not json"), 502, "not the JSON of its REST API"),
    (Answer(201, {"sid": "CA" + "0" * 32}, delay=2.0), 504, "did not answer within 1 s"),
])
def test_twilio_failing_is_a_clear_error_and_the_next_call_goes_through(server, fake, answer, status, said):
    fake.answers.append(answer)
    got, body, _ = post(server.url, {"to": CALLEE})
    assert got == status and body["meta"]["error"] == "twilio_error", body
    assert said in body["meta"]["message"]
    got, body, _ = post(server.url, {"to": CALLEE})
    assert got == 201 and body["call_sid"].startswith("CA")


def test_twilio_down_is_a_clear_error(server_factory, twilio):
    down = f"http://127.0.0.1:{free_port()}"
    server = server_factory(api_token=API_TOKEN, public_url="http://127.0.0.1:{port}", twilio_api_url=down,
                            twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token)
    got, body, _ = post(server.url, {"to": CALLEE, "from": FROM})
    assert got == 504 and f"cannot reach Twilio at {down}" in body["meta"]["message"], body
    assert calls_in_progress(server) == 0


def test_without_an_api_token_the_route_is_off(echo_server):
    got, body, _ = post(echo_server.url, {"to": CALLEE})
    assert got == 404 and "set API_TOKEN" in body["meta"]["error"]


def test_dial_places_a_call_from_the_command_line(server, fake):
    env = {**os.environ, "API_TOKEN": API_TOKEN, "PORT": str(server.port)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "callbridge", "dial", CALLEE, "--param", "customer=Ada",
                           "--machine-detection", "DetectMessageEnd"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    (placed,) = fake.requests
    assert done.stdout.strip() == f"call placed: {fake.created[-1]}"
    assert placed.at >= started
    assert placed.form["Url"] == f"{server.url}/telephone/outbound?customer=Ada"
    assert placed.form["MachineDetection"] == "DetectMessageEnd"
    fake.answers.append(twilio_error(400, 21211, "Invalid 'To' Phone Number"))
    done = subprocess.run([sys.executable, "-m", "callbridge", "dial", CALLEE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "call not placed: HTTP 502: twilio_error; message: Twilio answered 400" in done.stdout


async def test_outbound_calls_count_against_the_one_limit(server_factory, twilio, fake):
    server = server_factory(bot="tests.sample_bots:Receptionist", api_token=API_TOKEN, concurrency_limit=1,
                            public_url="http://127.0.0.1:{port}", twilio_account_sid=twilio.account_sid,
                            twilio_auth_token=twilio.auth_token, twilio_api_url=twilio.url)
    got, body, _ = post(server.url, {"to": CALLEE})
    assert got == 422 and '"from" is required when TWILIO_FROM_NUMBER is not set' in body["meta"]["error"]
    browser = asyncio.create_task(browser_call(server.url, "holds-the-slot", np.zeros(RATE, np.int16), pace=0.02,
                                               until="never", timeout=3.0))
    while calls_in_progress(server) == 0:
        await asyncio.sleep(0.05)
    got, body, _ = await asyncio.to_thread(post, server.url, {"to": CALLEE, "from": FROM})
    assert got == 429 and body["meta"] == {"error": "concurrency_limit_reached", "limit": 1}
    assert fake.requests == []
    # A call placed earlier and answered now, with every slot taken, is hung up on (<Reject> is for incoming calls).
    with pytest.raises(RuntimeError, match=r"no <Connect><Stream> in TwiML: .*<Hangup />"):
        await asyncio.to_thread(webhook, server.url, twilio.auth_token, server.url, "/telephone/outbound")
    await browser
    got, body, _ = await asyncio.to_thread(post, server.url, {"to": CALLEE, "from": FROM})
    assert got == 201 and fake.requests[0].form["From"] == FROM


def test_without_rest_credentials_outbound_calls_are_unavailable(server_factory, fake):
    server = server_factory(api_token=API_TOKEN, public_url="http://127.0.0.1:{port}", twilio_from_number=FROM)
    got, body, _ = post(server.url, {"to": CALLEE})
    assert got == 503 and "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN" in body["meta"]["error"]
