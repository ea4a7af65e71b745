"""Vonage calls end to end: a real server on loopback, driven over Vonage's published WebSocket protocol and
answer webhook (tests/integration/fake_vonage.py)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect

from callbridge.core.messages import ends_reply
from callbridge.simulator import Pause as TwilioPause
from callbridge.simulator import SimulatedCaller
from tests.integration.clients import raw_exchange
from tests.integration.fake_vonage import (
    Dtmf,
    Pause,
    Speak,
    VonageCaller,
    WaitForReply,
    answer,
    call_params,
    connected_message,
    get_payload,
    signature,
)
from tests.integration.test_edge import frame, open_raw_websocket, read_close_code
from tests.speech import peak_correlation, speech

RATE = 16000
HELLO = "Hello, this is a test call, can you hear me?"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."
SECRET = "vonage-signature-secret-of-the-tests"


def endpoint_of(base_url: str, params: dict[str, str] | None = None) -> dict:
    status, ncco = answer(base_url, params or call_params())
    assert status == 200, ncco
    return ncco[0]["endpoint"][0]


async def test_echo_round_trip(echo_server):
    params = call_params()
    status, ncco = answer(echo_server.url, params)
    assert status == 200
    (connect_action,) = ncco
    assert connect_action["action"] == "connect"
    (endpoint,) = connect_action["endpoint"]
    assert endpoint["type"] == "websocket"
    assert endpoint["uri"] == f"ws://127.0.0.1:{echo_server.port}/vonage/handler"
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    headers = endpoint["headers"]
    assert headers["uuid"] == params["uuid"] and headers["From"] == params["from"] and headers["To"] == params["to"]
    assert re.fullmatch(r"[0-9]+\.[0-9a-f]{32}", headers["token"]), "an expiry and an HMAC"
    assert len(json.dumps(headers)) <= 512, "Vonage's limit on headers"

    said = speech(HELLO, RATE)
    record = await VonageCaller(endpoint, [Pause(0.3), Speak(said), WaitForReply("heard")]).run()
    assert record.frame_sizes == {640}, "every binary message is one 20 ms frame, as Vonage requires"
    heard = record.heard_audio
    # The echo is the caller's turn, wideband: the same speech, as long as the turn (+ 200 ms pre-roll).
    assert peak_correlation(heard, said) > 0.9
    assert abs(len(heard) / RATE - (len(said) / RATE + 0.2)) < 0.15
    # Every notify answered by the caller once heard; one of them ends the reply (the others are its resume
    # points, one every 0.5 s: callbridge.core.playback).
    names = [m["payload"]["name"] for _, m in record.texts if m.get("action") == "notify"]
    assert [p["name"] for _, p in record.notifies_answered] == names
    assert len([name for name in names if ends_reply(name)]) == 1
    assert len(names) - 1 == int((len(heard) / RATE - 0.001) // 0.5)
    (latency,) = record.turn_latencies()
    assert 0.512 - 0.064 <= latency < 2.0, latency
    assert record.close_code == 1000
    await echo_server.wait_for_log(f"call {params['uuid']} ended: 1 turns")


async def test_answer_webhook_by_post(echo_server):
    params = call_params()
    status, ncco = answer(echo_server.url, params, method="POST")
    assert status == 200 and ncco[0]["endpoint"][0]["headers"]["uuid"] == params["uuid"]
    assert answer(echo_server.url, {"from": "447700900001"})[0] == 422


async def test_barge_in_clears_vonages_buffer(echo_server):
    story, interrupt = speech(STORY, RATE), speech(INTERRUPT, RATE)
    record = await VonageCaller(endpoint_of(echo_server.url), [
        Speak(story), WaitForReply("start"), Pause(1.0), Speak(interrupt), WaitForReply("heard"),
    ]).run()
    (clear,) = record.actions("clear")
    clear_delay = clear - record.speech_starts[1]
    # Speech start needs 192 ms of speech; the clear follows within a few windows of that.
    assert 0.19 <= clear_delay < 0.6, clear_delay
    assert len(record.reply_starts) == 2
    first_reply = record.received_samples - len(interrupt) - 0.2 * RATE
    assert first_reply < len(story) * 0.8, "the first reply stopped"
    assert peak_correlation(record.heard_audio[-len(interrupt) - 3200 :], interrupt) > 0.9


async def test_playback_tracking_waits_for_vonages_notify(server_factory):
    """'#' makes the keypad bot say goodbye and hang up once the goodbye is heard: the server closes the socket
    only after the caller answered the goodbye's notify, which this caller delays by a second."""
    server = server_factory(bot="tests.sample_bots:KeypadBot")
    record = await VonageCaller(endpoint_of(server.url), [
        Pause(0.2), Dtmf("2"), WaitForReply("heard"), Dtmf("#"), Pause(0.1)], hang_up=False, notify_delay=1.0).run()
    assert record.close_code == 1000
    ends = [(at, payload["name"]) for at, payload in record.notifies_answered if ends_reply(payload["name"])]
    assert len(ends) == 2
    # Digit 2 -> 300 ms beep; '#' -> 500 ms goodbye.
    assert record.received_samples / RATE == pytest.approx(0.8, abs=0.05)
    goodbye_heard = ends[1][0]
    assert record.closed_at is not None and record.closed_at >= goodbye_heard
    assert record.closed_at - record.reply_starts[1] >= 0.5 + 1.0 - 0.1, "held until the delayed notify came"


async def test_signed_webhooks(server_factory):
    server = server_factory(vonage_signature_secret=SECRET, concurrency_limit=5)
    params = call_params()
    good = signature(SECRET, get_payload(params))
    status, ncco = answer(server.url, params, good)
    assert status == 200 and ncco[0]["action"] == "connect"
    body = json.dumps(params, separators=(",", ":")).encode()
    assert answer(server.url, params, signature(SECRET, body), method="POST")[0] == 200
    refused = {
        "unsigned": None,
        "another secret": signature("not-the-secret-of-this-account-at-all", get_payload(params)),
        "forged signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "stale": signature(SECRET, get_payload(params), iat=time.time() - 600),
        "tampered payload": signature(SECRET, get_payload({**params, "from": "19990000000"})),
        "not a bearer": good.replace("Bearer ", "Basic "),
    }
    for name, authorization in refused.items():
        assert answer(server.url, params, authorization)[0] == 403, name
    assert server.logs().count("Vonage webhook refused") == len(refused)
    # The signed webhook's NCCO opens the socket.
    record = await VonageCaller(ncco[0]["endpoint"][0], [Speak(speech(HELLO, RATE)), WaitForReply("heard")]).run()
    assert len(record.reply_starts) == 1


async def test_the_limit_is_shared_with_twilio_calls(server_factory):
    server = server_factory(concurrency_limit=1)
    spare = endpoint_of(server.url)  # a token issued while there was room
    holder = asyncio.create_task(SimulatedCaller(server.url, [TwilioPause(3.0)]).run())
    await asyncio.sleep(1.0)
    assert answer(server.url, call_params()) == (200, []), "no room: an empty NCCO, and Vonage ends the call"
    received, code = await raw_exchange(spare["uri"], [connected_message(spare)])
    assert json.loads(received[0]) == {"status": "failed",
                                       "meta": {"error": "concurrency_limit_reached", "limit": 1}}
    assert code == 1013
    report = await holder
    assert not report.rejected
    # Once the Twilio call is over, a Vonage call gets the slot.
    record = await VonageCaller(endpoint_of(server.url), [Speak(speech(HELLO, RATE)), WaitForReply("heard")]).run()
    assert len(record.reply_starts) == 1


def connected_with(endpoint: dict, **changes: object) -> str:
    message = json.loads(connected_message(endpoint))
    message.update(changes)
    return json.dumps({k: v for k, v in message.items() if v is not None})


async def test_bad_input_never_disturbs_a_healthy_call(echo_server):
    said = speech(STORY, RATE)
    caller = VonageCaller(endpoint_of(echo_server.url), [Speak(said), WaitForReply("heard")])
    healthy = asyncio.create_task(caller.run())
    await asyncio.sleep(0.5)
    url = echo_server.url.replace("http", "ws") + "/vonage/handler"
    frame = np.zeros(320, "<i2").tobytes()
    bad = {
        "not json": (["{nope"], 1007, "JSON"),
        "audio before connected": ([frame], 1008, "before websocket:connected"),
        "dtmf before connected": ([json.dumps({"event": "websocket:dtmf", "digit": "1"})], 1008, "first message"),
        "forged token": ([connected_with(endpoint_of(echo_server.url), token="1" * 13 + "." + "0" * 32)], 1008,
                         "invalid or missing call token"),
        "no token": ([connected_with(endpoint_of(echo_server.url), token=None)], 1008, "call token"),
        "token of another call": ([connected_with(endpoint_of(echo_server.url), uuid="another-call")], 1008,
                                  "call token"),
        "narrowband": ([connected_with(endpoint_of(echo_server.url), **{"content-type": "audio/l16;rate=8000"})],
                       1007, "content-type"),
        "no uuid": ([connected_with(endpoint_of(echo_server.url), uuid=None)], 1007, "uuid"),
        "odd-length audio": ([connected_message(endpoint_of(echo_server.url)), frame[:-1]], 1007, "16-bit"),
        "unknown event": ([connected_message(endpoint_of(echo_server.url)), json.dumps({"event": "dance"})], 1007,
                          "unknown event"),
        "dtmf without digit": ([connected_message(endpoint_of(echo_server.url)),
                                json.dumps({"event": "websocket:dtmf"})], 1007, "digit"),
        "notify without payload": ([connected_message(endpoint_of(echo_server.url)),
                                    json.dumps({"event": "websocket:notify"})], 1007, "payload"),
        "connected twice": ([connected_message(spare := endpoint_of(echo_server.url)), connected_message(spare)], 1008,
                            "after it"),
        "oversized audio": ([connected_message(endpoint_of(echo_server.url)), b"\x00" * 70000], 1009, "limit"),
    }
    for name, (messages, expected_code, reason) in bad.items():
        async with connect(url, max_size=None) as ws:
            for message in messages:
                await ws.send(message)
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == expected_code, (name, ws.close_code, ws.close_reason)
        assert reason in (ws.close_reason or ""), (name, ws.close_reason)
    # A token opens one socket only: replayed after its call, it is refused.
    used = endpoint_of(echo_server.url)
    await VonageCaller(used, [Pause(0.2)]).run()
    _, code = await raw_exchange(used["uri"], [connected_message(used)])
    assert code == 1008

    record = await healthy
    assert peak_correlation(record.heard_audio, said) > 0.9
    assert len(record.reply_starts) == 1
    with urllib.request.urlopen(echo_server.url + "/readyz") as response:
        assert json.load(response)["calls"] == 0, "every bad socket freed its slot"


def test_binary_frames_coalesced_split_or_fragmented_are_read_alike(echo_server):
    """The edge reads whole binary frames itself (callbridge.edge.server: _whole_frames), the rest through
    websockets: good audio frames in any layout leave the call up; the one bad frame after them is the one named."""
    endpoint = endpoint_of(echo_server.url)
    sock, head = open_raw_websocket(echo_server.port, "/vonage/handler")
    assert head.startswith(b"HTTP/1.1 101")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    audio = frame(0x2, np.zeros(320, "<i2").tobytes())
    with sock:
        sock.sendall(frame(0x1, connected_message(endpoint).encode()) + audio * 3)  # four messages in one segment
        for byte in audio:  # one frame, one byte per segment
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        pcm = np.zeros(320, "<i2").tobytes()
        sock.sendall(frame(0x2, pcm[:100], fin=False) + frame(0x9, b"hi") + frame(0x0, pcm[100:])  # fragments
                     + audio + frame(0x2, b"\x00" * 641))
        assert read_close_code(sock) == 1007
    assert "binary audio of 641 bytes is not 16-bit samples" in echo_server.logs()


async def test_an_idle_socket_and_a_flooding_one_are_closed(server_factory):
    """The media sockets' guards hold on Vonage's: no websocket:connected within MEDIA_START_TIMEOUT_SECONDS, or
    caller audio beyond INBOUND_BACKLOG_SECONDS faster than real time, and the socket is closed with 1008."""
    server = server_factory(media_start_timeout_seconds=1, inbound_backlog_seconds=1)
    url = server.url.replace("http", "ws") + "/vonage/handler"
    _, code = await raw_exchange(url, [], timeout=10)
    assert code == 1008
    assert "vonage -: no start message within 1 s; closing with 1008" in server.logs()
    endpoint = endpoint_of(server.url)
    burst = [np.zeros(320, "<i2").tobytes()] * 250  # 5 s of audio at once
    _, code = await raw_exchange(endpoint["uri"], [connected_message(endpoint), *burst], timeout=10)
    assert code == 1008
    assert f"vonage {endpoint['headers']['uuid']}: caller audio arrives faster than real time" in server.logs()
