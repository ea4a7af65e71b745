"""Hostile input on a real server, each beside a healthy phone call whose echo must stay whole: bodies nested
deeper than any parser's stack, ids that would forge log lines, phone numbers kept out of INFO logs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from callbridge.simulator import SimulatedCaller, Speak, WaitForReply, webhook
from tests.integration.clients import raw_exchange
from tests.speech import peak_correlation, speech

RATE = 8000
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(concurrency_limit=10, log_format="text", call_token_secret="hostile-input")


@pytest.fixture
async def healthy_call(server):
    """A phone call running while the test attacks; asserts afterwards that the caller heard its echo whole."""
    said = speech(STORY, RATE)
    call = asyncio.create_task(SimulatedCaller(server.url, [Speak(said), WaitForReply("heard")]).run())
    await asyncio.sleep(0.5)
    yield
    report = await call
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert report.stall_seconds == 0 and len(report.reply_starts) == 1


@pytest.mark.parametrize("path", ["/webrtc/offer", "/input_hook"])
async def test_json_nested_past_any_stack_is_a_422_not_a_traceback(server, healthy_call, path):
    deep = "[" * 100_000 + "]" * 100_000
    before = server.logs().count("Traceback")
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 422  # what any body that is not a JSON object gets
        assert response.json()["status"] == "failed" and response.json()["meta"]["error"]
        assert (await client.get("/healthz")).status_code == 200
    assert server.logs().count("Traceback") == before


async def test_control_characters_in_client_ids_cannot_forge_log_lines(server, healthy_call):
    ws_url = server.url.replace("http", "ws")
    forged = "FORGED ERROR callbridge: all calls dropped"
    browser_id = f"id-1\n{forged}\r\x00"
    await raw_exchange(ws_url + "/websocket/offer", [
        json.dumps({"event": "start", "websocket_id": browser_id}), json.dumps({"event": "start"})])
    _, params = webhook(server.url)
    await raw_exchange(ws_url + "/telephone/handler", [json.dumps({"event": "start", "start": {
        "streamSid": f"MZ1\n{forged}", "callSid": params["CallSid"] + f"\n{forged}",
        "customParameters": {"token": params["token"]}}})])
    await asyncio.sleep(0.2)
    lines = server.logs().splitlines()
    assert not [line for line in lines if line.startswith(forged)], "a client's id began a line of its own"
    assert any("id-1\\n" + forged in line for line in lines), "the id is logged, escaped"
    assert "\x00" not in server.logs()


async def test_phone_numbers_are_masked_in_info_logs(server, healthy_call):
    webhook(server.url, From="+15557770123", To="+15558880456")
    await asyncio.sleep(0.1)
    logs = server.logs()
    assert "+15557770123" not in logs and "+15558880456" not in logs
    assert "from ***0123 to ***0456" in logs
