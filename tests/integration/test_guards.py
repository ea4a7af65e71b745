"""Clients that would hold a call's slot without using it, and pages of other sites: a real server on loopback,
raw sockets where a client library would answer for the client (pings) or read for it, each beside a healthy
echo call that must stay whole."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.simulator import webhook
from tests.integration.clients import BrowserResult, browser_call, raw_exchange
from tests.integration.conftest import Server
from tests.integration.test_edge import frame, open_raw_websocket
from tests.speech import peak_correlation, silence, speech

RATE = 8000
HELLO = "Hello, this is a test call, can you hear me?"
OWN_SITE = "https://app.example"
OTHER_SITE = "https://elsewhere.example"


@pytest.fixture(scope="module")
def guarded(server_factory) -> Server:
    """Small timeouts, so that a test sees them pass; one other site's pages allowed."""
    return server_factory(media_start_timeout_seconds=1, media_ping_timeout_seconds=2, allowed_origins=OWN_SITE)


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def healthy_echo(server: Server, call_id: str, **options: str) -> tuple[asyncio.Task[BrowserResult], np.ndarray]:
    """A browser call speaking in real time (for about seven seconds, until its echo has played)."""
    said = speech(HELLO, RATE)
    call = browser_call(server.url, call_id, np.concatenate([said, silence(1.0, RATE)]), pace=0.02, **options)
    return asyncio.create_task(call), said


def assert_whole(result: BrowserResult, said: np.ndarray) -> None:
    assert result.logs[-1] == "playback_finished", result.logs
    assert peak_correlation(result.reply, said) > 0.9
    assert abs(len(result.reply) / RATE - (len(said) / RATE + 0.2)) < 0.15  # the turn and its 200 ms pre-roll
    assert result.close_code == 1000


async def test_a_socket_that_never_sends_start_is_closed(guarded):
    healthy, said = healthy_echo(guarded, "healthy-beside-idle")
    received, code = await raw_exchange(ws_url(guarded, "/websocket/offer"), [], timeout=10)
    assert code == 1008
    assert [json.loads(text) for text in received] == [{"type": "error", "data": "no start message within 1 s"}]
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    received, code = await raw_exchange(ws_url(guarded, "/telephone/handler"), [connected], timeout=10)
    assert (received, code) == ([], 1008)
    assert "websocket -: no start message within 1 s; closing with 1008" in guarded.logs()
    assert "twilio -: no start message within 1 s; closing with 1008" in guarded.logs()
    assert_whole(await healthy, said)


def start_message(transport: str, call_id: str, port: int) -> tuple[str, str]:
    """(path, start message) of a call on `transport`; a Twilio call comes through the webhook first."""
    if transport == "websocket":
        return "/websocket/offer", json.dumps({"event": "start", "websocket_id": call_id})
    _, params = webhook(f"http://127.0.0.1:{port}")
    custom = {name: value for name, value in params.items() if name != "CallSid"}
    return "/telephone/handler", json.dumps({"event": "start", "streamSid": call_id, "start": {
        "streamSid": call_id, "callSid": params["CallSid"], "customParameters": custom}})


@pytest.mark.parametrize("transport", ["twilio", "websocket"])
async def test_a_frozen_client_is_dropped_and_its_call_ended(guarded, transport):
    """After its start the client neither reads nor answers, as a process stopped with SIGSTOP whose kernel
    still acknowledges every segment: the edge's ping goes unanswered."""
    call_id = f"frozen-{transport}"
    path, start = await asyncio.to_thread(start_message, transport, call_id, guarded.port)
    healthy, said = healthy_echo(guarded, f"healthy-beside-{call_id}")
    sock, head = await asyncio.to_thread(open_raw_websocket, guarded.port, path)
    try:
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(frame(0x1, start.encode()))
        await guarded.wait_for_log(f"{transport} {call_id}: dropped: no pong within 2 s")
        await guarded.wait_for_log(f"call {call_id} ended")  # logged once its slot is free
    finally:
        sock.close()
    assert_whole(await healthy, said)


def flood_without_reading(sock: socket.socket, seconds: float = 20.0) -> bool:
    """Send WebSocket pings (each owed a 127-byte pong) and read nothing; True once the server cuts the
    connection, False if it has not within `seconds`, or if our sends block (the socket's 5 s timeout) with
    the server neither reading nor cutting.

    Bounded by time, not bytes: how much a connection's buffers hold depends on the machine (net.ipv4.tcp_rmem
    lets the server's receive buffer grow to 32 MB on some), so a flood of any fixed size can end before the
    server has seen its pongs back up for MEDIA_SEND_TIMEOUT_SECONDS."""
    pings = frame(0x9, b"x" * 125) * 1000
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(pings)
        except TimeoutError:
            return False
        except OSError:
            return True
        time.sleep(0.01)
    return False


async def test_a_client_that_never_reads_is_dropped(server_factory):
    # Pings so rare that only the send timeout can drop it.
    server = server_factory(media_send_timeout_seconds=1, media_ping_timeout_seconds=300)
    healthy, said = healthy_echo(server, "healthy-beside-never-reads")
    sock, head = await asyncio.to_thread(open_raw_websocket, server.port, "/websocket/offer", receive_buffer=4096)
    try:
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(frame(0x1, json.dumps({"event": "start", "websocket_id": "never-reads"}).encode()))
        assert await asyncio.to_thread(flood_without_reading, sock), "the server kept a client that never reads"
    finally:
        sock.close()
    await server.wait_for_log("websocket never-reads: dropped: outbound data backed up for 1 s "
                               "(the client is not reading)")
    await server.wait_for_log("call never-reads ended")
    assert_whole(await healthy, said)


async def test_pages_of_other_sites_are_refused_and_the_services_own_and_allowed_ones_are_not(guarded):
    refusal = {"status": "failed", "meta": {"error": f"pages from {OTHER_SITE} may not use this service "
                                                     "(ALLOWED_ORIGINS)"}}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(guarded, "/websocket/offer"), origin=OTHER_SITE):
            pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body) == refusal

    own_page = f"http://127.0.0.1:{guarded.port}"  # the softphone, served by the service itself
    healthy, said = healthy_echo(guarded, "same-origin", origin=own_page)
    for origin in (OWN_SITE, None):  # the allowed site; a client that is no browser
        async with connect(ws_url(guarded, "/websocket/offer"), origin=origin) as ws:
            await ws.send(json.dumps({"event": "start", "websocket_id": f"from-{origin}"}))
            await ws.send(json.dumps({"event": "stop"}))
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000
    # Twilio sends no Origin, and its stream is not a page's to open: it is not checked there.
    async with connect(ws_url(guarded, "/telephone/handler"), origin=OTHER_SITE) as ws:
        await ws.send(json.dumps({"event": "stop"}))
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008  # a stop before start: the socket itself was accepted

    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        other = {"Origin": OTHER_SITE}
        offer = {"sdp": "v=0", "type": "offer", "webrtc_id": "cross-site"}
        for response in (await http.post("/webrtc/offer", json=offer, headers=other),
                         await http.post("/input_hook", json={"webrtc_id": "same-origin", "x": 1}, headers=other),
                         await http.get("/updates", params={"webrtc_id": "same-origin"}, headers=other)):
            assert (response.status_code, response.json()) == (403, refusal), response.request.url
        for origin in (own_page, OWN_SITE):  # these reach the route, which judges the body
            response = await http.post("/webrtc/offer", json={"type": "offer"}, headers={"Origin": origin})
            assert response.status_code == 422, response.text
    assert f"refused a WebSocket upgrade to /websocket/offer: pages from {OTHER_SITE}" in guarded.logs()
    assert_whole(await healthy, said)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_not_sent_as_json_is_refused(guarded, content_type):
    """A page may send text/plain or a form to any site without asking; JSON needs a CORS preflight."""
    headers = {"Content-Type": content_type} if content_type else {}
    error = f"the body must be JSON sent as Content-Type: application/json, not {content_type or 'no Content-Type'}"
    body = json.dumps({"sdp": "v=0", "type": "offer", "webrtc_id": "as-text"})
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        for route in ("/webrtc/offer", "/input_hook"):
            response = await http.post(route, content=body, headers=headers)
            assert (response.status_code, response.json()) == (415, {"status": "failed", "meta": {"error": error}})
        as_json = await http.post("/webrtc/offer", content=body, headers={"Content-Type": "application/json"})
    assert as_json.status_code == 400 and "cannot answer" in as_json.json()["meta"]["error"]
