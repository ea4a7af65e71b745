"""WebRTC calls end to end: a real server on loopback and a pure-Python aiortc peer, both on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription

from callbridge.codec import resample
from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForReply, webhook
from tests.integration.webrtc_bots import GREETING_SECONDS
from tests.integration.webrtc_peer import (
    FRAME,
    LOOPBACK_ICE,
    RATE,
    Peer,
    loopback_ice,  # noqa: F401 (an autouse fixture)
    post_offer,
)
from tests.speech import peak_correlation, silence, speech

HELLO = "Hello, this is a test call, can you hear me?"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."
@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(concurrency_limit=20, **LOOPBACK_ICE)


def at_8k(samples: np.ndarray) -> np.ndarray:
    """Correlating at 8 kHz is 36 times cheaper than at 48 kHz and just as telling for speech."""
    return resample(samples, RATE, 8000)


async def test_echo_call(server):
    said = speech(HELLO, RATE)
    peer = Peer(server.url, "webrtc-echo")
    try:
        await peer.connect()
        peer.microphone.say(np.concatenate([silence(0.3, RATE), said]))
        await peer.wait_for_log("playback_finished")
        await asyncio.sleep(0.3)  # the last frames are still on their way through the jitter buffer
    finally:
        await peer.close()
    logs = peer.logs
    assert logs[:4] == ["started_talking", "pause_detected", "response_starting", "playback_finished"], logs
    assert peer.tracks == 1
    # The reply is the caller's own turn (with ~200 ms pre-roll), back through Opus twice.
    reply = peer.reply
    assert peak_correlation(at_8k(reply), at_8k(said)) > 0.8
    # At the caller's own level: the bot's audio is not attenuated on its way out (e.g. by a mono upmix).
    assert 0.8 < np.abs(reply.astype(np.int32)).max() / np.abs(said.astype(np.int32)).max() < 1.25
    loud = np.flatnonzero(np.abs(reply.astype(np.int32)) > 500)
    assert abs((loud[-1] - loud[0]) / RATE - len(said) / RATE) < 0.3
    # Closing the page ends the call on the server and frees its slot.
    await server.wait_for_log("call webrtc-echo ended: 1 turns")


async def test_barge_in_flushes_the_reply(server):
    story, interrupt = speech(STORY, RATE), speech(INTERRUPT, RATE)
    peer = Peer(server.url, "webrtc-barge-in")
    try:
        await peer.connect()
        peer.microphone.say(story)
        await peer.wait_for_log("response_starting")
        await asyncio.sleep(1.0)
        interrupted_at = peer.microphone.say(interrupt)
        await peer.wait_for_log("response_starting", count=2)
        await peer.wait_for_log("playback_finished")
        await asyncio.sleep(0.3)
    finally:
        await peer.close()
    barge_in_at = peer.log_time("barge_in")
    second_reply_at = [t for t, m in peer.messages if m == {"type": "log", "data": "response_starting"}][1]
    # The interruption is noticed within a few VAD windows of its onset (speech start needs 192 ms).
    assert 0.19 <= barge_in_at - interrupted_at < 0.8, barge_in_at - interrupted_at
    # The story was playing, and stopped at once: from barge-in (plus the way through the jitter buffer)
    # to the second reply the caller hears silence, not the rest of the queued story.
    assert np.abs(peer.heard_between(barge_in_at - 0.5, barge_in_at).astype(np.int32)).max() > 3000
    assert np.abs(peer.heard_between(barge_in_at + 0.15, second_reply_at).astype(np.int32)).max() < 300
    assert second_reply_at - barge_in_at > len(interrupt) / RATE  # the interruption was one whole turn
    # The second reply is the interruption itself.
    assert peak_correlation(at_8k(peer.heard_between(second_reply_at, float("inf"))), at_8k(interrupt)) > 0.8


async def test_trickled_candidates_connect(server):
    """Candidates sent one by one (as browsers trickle them) after an offer that carries none."""
    peer = Peer(server.url, "webrtc-trickle")
    try:
        body = await peer.offer_body()
        lines = body["sdp"].splitlines()
        candidates = [line.removeprefix("a=") for line in lines if line.startswith("a=candidate:")]
        kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
        body["sdp"] = "\r\n".join(kept) + "\r\n"
        assert candidates
        response = await post_offer(server.url, body)
        assert response.status_code == 200, response.text
        await peer.pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        for candidate in [*candidates, ""]:
            trickle = {"type": "ice-candidate", "webrtc_id": peer.call_id,
                       "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}
            response = await post_offer(server.url, trickle)
            assert response.json() == {"status": "success"}
        await peer.wait_connected()
        peer.microphone.say(speech(HELLO, RATE))
        await peer.wait_for_log("pause_detected")
    finally:
        await peer.close()


async def test_send_mode_listens_only(server):
    peer = Peer(server.url, "webrtc-send", mode="send")
    try:
        await peer.connect(mode="send")
        peer.microphone.say(speech(HELLO, RATE))
        await peer.wait_for_log("playback_finished")
    finally:
        await peer.close()
    assert peer.logs[:4] == ["started_talking", "pause_detected", "response_starting", "playback_finished"]
    assert "a=recvonly" in peer.pc.remoteDescription.sdp
    assert peer.tracks == 0 and not peer.heard


async def test_receive_mode_bot_talks_first_then_hangs_up(server_factory):
    server = server_factory(bot="tests.integration.webrtc_bots:GreetAndHangUp", **LOOPBACK_ICE)
    peer = Peer(server.url, "webrtc-receive", mode="receive")
    body = await peer.offer_body()
    try:
        response = await post_offer(server.url, body, "?mode=receive")  # mode in the query string
        assert response.status_code == 200, response.text
        await peer.pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await peer.wait_connected()
        await peer.wait_for_log("playback_finished", timeout=5)
        # After its last words the bot hangs up: the server closes the connection.
        async with asyncio.timeout(5):
            while peer.pc.connectionState == "connected":
                await asyncio.sleep(0.02)
        hung_up_at = asyncio.get_running_loop().time()
    finally:
        await peer.close()
    assert "a=sendonly" in response.json()["sdp"]
    assert peer.logs == ["response_starting", "playback_finished"]
    # The whole greeting was heard before the hang-up: count the frames that carried the tone.
    tone = peer.heard_between(0.0, hung_up_at)
    loud_seconds = sum(len(f) for f in np.array_split(tone, max(1, len(tone) // FRAME))
                       if np.abs(f.astype(np.int32)).max() > 3000) / RATE
    assert GREETING_SECONDS - 0.05 <= loud_seconds <= GREETING_SECONDS + 0.1, loud_seconds
    await server.wait_for_log("webrtc webrtc-receive: ending: the bot hung up")
    await server.wait_for_log("call webrtc-receive ended")


async def test_limit_and_duplicate_ids(server_factory):
    server = server_factory(concurrency_limit=1, **LOOPBACK_ICE)
    first = Peer(server.url, "webrtc-first")
    try:
        await first.connect()
        duplicate = await post_offer(server.url, await Peer(server.url, "webrtc-first").offer_body())
        assert duplicate.status_code == 409
        assert duplicate.json() == {"status": "failed", "meta": {"error": "connection_already_exists"}}
        over = await post_offer(server.url, await Peer(server.url, "webrtc-second").offer_body())
        assert over.status_code == 429
        assert over.json() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 1}}
    finally:
        await first.close()
    await server.wait_for_log("call webrtc-first ended")
    again = Peer(server.url, "webrtc-second")
    try:
        await again.connect()
    finally:
        await again.close()


async def test_an_offer_that_never_connects_gives_its_slot_back_by_the_default_timeout(server_factory):
    """A page that posts an offer and goes away holds a slot, phone callers hear busy meanwhile: for
    WEBRTC_CONNECT_TIMEOUT_SECONDS' default of 10 s, not the 30 s of ICE consent."""
    server = server_factory(concurrency_limit=1, **LOOPBACK_ICE)
    ghost = Peer(server.url, "webrtc-ghost")
    assert (await post_offer(server.url, await ghost.offer_body())).status_code == 200
    await ghost.close()  # its answer is never applied
    with pytest.raises(RuntimeError, match="rejected"):
        await asyncio.to_thread(webhook, server.url)
    await server.wait_for_log("webrtc webrtc-ghost: ending: no connection within 10 s", timeout=15)
    await server.wait_for_log("call webrtc-ghost ended")
    said = speech(HELLO, 8000)
    report = await SimulatedCaller(server.url, [Pause(0.3), Speak(said), WaitForReply("heard")]).run()
    assert report.close_code == 1000 and peak_correlation(report.heard_audio, said) > 0.9


async def test_bad_requests_get_clear_errors(server):
    assert (await post_offer(server.url, {"sdp": "v=0", "type": "offer"})).status_code == 422
    bad_mode = await post_offer(server.url, {"sdp": "v=0", "type": "offer", "webrtc_id": "x", "mode": "both"})
    assert bad_mode.status_code == 422 and "mode must be one of" in bad_mode.json()["meta"]["error"]
    unknown = await post_offer(server.url, {"type": "ice-candidate", "webrtc_id": "nobody",
                                            "candidate": {"candidate": "", "sdpMid": "0"}})
    assert unknown.status_code == 404
    garbage = await post_offer(server.url, {"sdp": "not sdp", "type": "offer", "webrtc_id": "webrtc-garbage"})
    assert garbage.status_code == 400 and "cannot answer" in garbage.json()["meta"]["error"]
    # The refused offer freed its id at once.
    peer = Peer(server.url, "webrtc-garbage")
    try:
        await peer.connect()
    finally:
        await peer.close()


async def test_without_libopus_offers_get_a_503_that_says_what_to_install(server_factory):
    server = server_factory(pythonpath=str(Path(__file__).parent / "no_libopus"))
    peer = Peer(server.url, "webrtc-no-opus")
    try:
        response = await post_offer(server.url, await peer.offer_body())
    finally:
        await peer.close()
    assert response.status_code == 503
    assert "apt-get install libopus0" in response.json()["meta"]["error"]
    await server.wait_for_log("webrtc offer webrtc-no-opus refused")
    async with httpx.AsyncClient(base_url=server.url) as client:  # the rest of the service is unaffected
        assert (await client.get("/healthz")).status_code == 200


async def test_timeouts_and_status_200(server_factory):
    """A peer that never connects loses its slot; a connected call ends at the time limit; 200 over the limit;
    shutdown hangs up what is left. (This test stops its server.)"""
    server = server_factory(concurrency_limit=1, limit_status_code=200, webrtc_connect_timeout_seconds=1,
                            webrtc_max_call_seconds=1.5, shutdown_grace_seconds=0, **LOOPBACK_ICE)
    silent = Peer(server.url, "webrtc-silent")
    assert (await post_offer(server.url, await silent.offer_body())).status_code == 200
    over = await post_offer(server.url, await Peer(server.url, "webrtc-over").offer_body())
    assert over.status_code == 200 and over.json()["meta"]["error"] == "concurrency_limit_reached"
    await silent.close()  # the answer is never applied: the server must give up by itself
    await server.wait_for_log("call webrtc-silent ended", timeout=5)
    assert "webrtc webrtc-silent: ending: no connection within 1 s" in server.logs()

    peer = Peer(server.url, "webrtc-limited")
    try:
        await peer.connect()
        connected_at = time.monotonic()
        async with asyncio.timeout(5):
            while peer.pc.connectionState == "connected":
                await asyncio.sleep(0.05)
        assert time.monotonic() - connected_at >= 1.2
    finally:
        await peer.close()
    await server.wait_for_log("call webrtc-limited ended")
    assert "webrtc webrtc-limited: ending: time limit of 1.5 s reached" in server.logs()

    # SIGTERM with no grace period: the bot says goodbye (the echo bot: nothing) and hangs up, which closes
    # the peer connection at once rather than leaving the browser to notice ~30 s later.
    last = Peer(server.url, "webrtc-at-shutdown")
    try:
        await last.connect()
        await asyncio.to_thread(server.stop)
        async with asyncio.timeout(5):
            while last.pc.connectionState == "connected":
                await asyncio.sleep(0.05)
    finally:
        await last.close()
    logs = server.logs()
    assert "webrtc webrtc-at-shutdown: ending: the bot hung up" in logs
    assert "call webrtc-at-shutdown ended" in logs
