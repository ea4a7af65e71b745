"""WebRTC video and audio-video calls end to end: a real server on loopback and an aiortc peer with a camera."""

from __future__ import annotations

import asyncio
import itertools
import re

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription

from tests.integration.webrtc_bots import RECEIVE_FRAMES
from tests.integration.webrtc_peer import (
    LOOPBACK_ICE,
    RATE,
    CameraTrack,
    Peer,
    gradient,
    loopback_ice,  # noqa: F401 (an autouse fixture)
    post_offer,
)
from tests.speech import peak_correlation, silence, speech

BOTS = "tests.integration.webrtc_bots"
WIDTH = 320
BANDS = 8


def video_server(server_factory, bot: str, **env):
    return server_factory(bot=bot if ":" in bot or bot == "mirror" else f"{BOTS}:{bot}", **LOOPBACK_ICE, **env)


def column_profile(frame: np.ndarray) -> np.ndarray:
    """Mean brightness per column, below the mirror bot's clock box."""
    return frame[60:].mean(axis=(0, 2))


def numbered(index: int) -> np.ndarray:
    """Frame `index` with its number in BANDS vertical bands, white for a 1 bit: it survives VP8."""
    bits = (index >> np.arange(BANDS)) & 1
    row = np.repeat(bits * 255, WIDTH // BANDS).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], 240, axis=0), 3, axis=2)


def number_of(frame: np.ndarray) -> int:
    centres = frame[:, WIDTH // BANDS // 2 :: WIDTH // BANDS].mean(axis=(0, 2))
    return int(sum(1 << bit for bit, level in enumerate(centres) if level > 127))


@pytest.mark.parametrize("bot", ["Mirror", "AsyncMirror"])
async def test_video_send_receive_transforms_each_frame(server_factory, bot):
    server = video_server(server_factory, bot)
    peer = Peer(server.url, "video-mirror", modality="video")
    try:
        await peer.connect(modality="video")
        await peer.wait_for_frames(10)
    finally:
        await peer.close()
    assert peer.tracks == 1  # video only: no audio track came back
    seen = peer.seen[-1]
    assert seen.shape == (240, 320, 3)
    # The camera's gradient, dark to bright, comes back bright to dark, within VP8's loss both ways.
    expected = column_profile(gradient(0))[::-1]
    assert np.abs(column_profile(seen) - expected).mean() < 12
    await server.wait_for_log("call video-mirror ended")
    handed = re.search(r"webrtc video-mirror: video: (\d+) frames handed to the bot", server.logs())
    assert handed and int(handed.group(1)) >= 10


async def test_the_shipped_mirror_bot_mirrors_and_shows_the_clock(server_factory):
    server = video_server(server_factory, "mirror")
    peer = Peer(server.url, "video-shipped-mirror", modality="video")
    try:
        await peer.connect(modality="video")
        await peer.wait_for_frames(5)
    finally:
        await peer.close()
    seen = peer.seen[-1]
    assert np.abs(column_profile(seen) - column_profile(gradient(0))[::-1]).mean() < 12
    clock = seen[:28, :150]  # black box with white digits over what would be the gradient's bright end
    assert (clock < 60).mean() > 0.4 and (clock > 200).mean() > 0.05


async def test_a_slow_handler_skips_frames_instead_of_queueing_them(server_factory):
    server = video_server(server_factory, "Slow")
    peer = Peer(server.url, "video-slow", modality="video", camera=CameraTrack(numbered))
    try:
        await peer.connect(modality="video")
        await peer.wait_for_frames(40)
        sent = peer.camera.sent
    finally:
        await peer.close()
    shown = [number_of(frame) for frame in peer.seen]
    distinct = [n for i, n in enumerate(shown) if i == 0 or n != shown[i - 1]]
    assert len(distinct) >= 3, distinct
    # Each frame the handler got was the newest: the camera's frames in between were skipped, not queued.
    assert all(b - a >= 2 for a, b in itertools.pairwise(distinct)), distinct
    assert distinct == sorted(distinct) and distinct[-1] <= sent
    await server.wait_for_log("call video-slow ended")
    handed, skipped = map(int, re.search(r"webrtc video-slow: video: (\d+) frames handed to the bot, (\d+) skipped",
                                         server.logs()).groups())
    assert skipped > handed  # a camera at CAMERA_FPS against a handler taking SLOW_SECONDS


async def test_video_inputs_and_outputs_on_the_data_channel(server_factory):
    server = video_server(server_factory, "Tinted")
    peer = Peer(server.url, "video-tinted", modality="video")
    try:
        await peer.connect(modality="video")
        await peer.wait_for_message(lambda m: m["type"] == "send_input")
        await peer.wait_for_frames(3)
        # Until the input is set the camera comes back as it is.
        assert abs(peer.seen[-1][60:, :, 2].mean() - 127) < 15
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{server.url}/input_hook", json={"webrtc_id": peer.call_id, "red": 200})
        assert response.status_code == 200
        output = await peer.wait_for_message(lambda m: m["type"] == "fetch_output")
        count = len(peer.seen)
        await peer.wait_for_frames(count + 5)
    finally:
        await peer.close()
    assert abs(output["data"][0] - 127.5) < 10  # the handler saw the gradient
    assert abs(peer.seen[-1][60:, 20:-20, 2].mean() - 200) < 25
    # The blue and green channels still carry the gradient.
    assert np.abs(peer.seen[-1][60:, :, 0].mean(axis=0) - column_profile(gradient(0))).mean() < 25


async def test_a_handler_that_raises_is_told_once_and_the_call_goes_on(server_factory):
    server = video_server(server_factory, "Broken")
    peer = Peer(server.url, "video-broken", modality="video")
    try:
        await peer.connect(modality="video")
        error = await peer.wait_for_message(lambda m: m["type"] == "error")
        await asyncio.sleep(0.5)  # several more frames, each raising
        assert peer.pc.connectionState == "connected"
    finally:
        await peer.close()
    assert error["data"] == "video handler error: ValueError: no faces here"
    assert [m for _, m in peer.messages if m["type"] == "error"] == [error]
    await server.wait_for_log("call video-broken ended")
    assert "Traceback" in server.logs() and "no faces here" in server.logs()


async def test_video_send_mode_sends_nothing_back_but_messages(server_factory):
    server = video_server(server_factory, "Measure")
    peer = Peer(server.url, "video-send", mode="send", modality="video")
    try:
        await peer.connect(mode="send", modality="video")
        outputs = [await peer.wait_for_message(lambda m: m["type"] == "fetch_output")]
    finally:
        await peer.close()
    assert "a=recvonly" in peer.pc.remoteDescription.sdp
    assert peer.tracks == 0 and not peer.seen
    assert abs(outputs[0]["data"][0] - 127.5) < 10


async def test_video_receive_mode_shows_the_bots_frames_then_ends(server_factory):
    server = video_server(server_factory, "Counting")
    peer = Peer(server.url, "video-receive", mode="receive", modality="video")
    body = await peer.offer_body()
    try:
        response = await post_offer(server.url, body, "?mode=receive&modality=video")  # both in the query string
        assert response.status_code == 200, response.text
        await peer.pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await peer.wait_connected()
        async with asyncio.timeout(15):
            while peer.pc.connectionState == "connected":
                await asyncio.sleep(0.05)
    finally:
        await peer.close()
    assert "a=sendonly" in response.json()["sdp"]
    levels = [frame.mean() for frame in peer.seen]
    assert len(levels) >= RECEIVE_FRAMES // 2
    assert levels[-1] - levels[0] > 60 and all(b >= a - 4 for a, b in itertools.pairwise(levels))
    await server.wait_for_log("webrtc video-receive: ending: the bot's video ended")


async def test_video_receive_mode_waits_for_the_inputs_it_wants(server_factory):
    server = video_server(server_factory, "FramesAt")
    peer = Peer(server.url, "video-receive-inputs", mode="receive", modality="video")
    try:
        await peer.connect(mode="receive", modality="video")
        await peer.wait_for_message(lambda m: m["type"] == "send_input")
        assert not peer.seen  # nothing to show before the input is set
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{server.url}/input_hook", json={"webrtc_id": peer.call_id, "level": 90})
        assert response.status_code == 200
        await peer.wait_for_frames(5)
    finally:
        await peer.close()
    assert abs(peer.seen[-1].mean() - 90) < 6


async def test_audio_video_turns_get_the_frame_and_may_show_one(server_factory):
    server = video_server(server_factory, "ShowTurnFrame")
    said = speech("Hello, can you see me?", RATE)
    peer = Peer(server.url, "av-send-receive", modality="audio-video")
    try:
        await peer.connect(modality="audio-video")
        assert not peer.seen  # no live transform: nothing is shown before the reply's picture
        peer.microphone.say(np.concatenate([silence(0.3, RATE), said]))
        await peer.wait_for_log("playback_finished")
        await peer.wait_for_frames(3)
        await asyncio.sleep(0.3)
    finally:
        await peer.close()
    assert peer.logs[:4] == ["started_talking", "pause_detected", "response_starting", "playback_finished"]
    assert peer.tracks == 2
    assert peak_correlation(peer.reply, said) > 0.8  # the echo, as in an audio call
    # The turn's frame, inverted by the bot: the gradient's dark end is now bright.
    assert np.abs(column_profile(peer.seen[-1]) - (255 - column_profile(gradient(0)))).mean() < 12


async def test_audio_video_send_mode_listens_and_watches(server_factory):
    server = video_server(server_factory, "ShowTurnFrame")
    peer = Peer(server.url, "av-send", mode="send", modality="audio-video")
    try:
        await peer.connect(mode="send", modality="audio-video")
        peer.microphone.say(speech("Hello there.", RATE))
        await peer.wait_for_log("playback_finished")
    finally:
        await peer.close()
    assert peer.logs[:4] == ["started_talking", "pause_detected", "response_starting", "playback_finished"]
    assert peer.tracks == 0 and not peer.seen and not peer.heard


async def test_audio_video_receive_mode_with_the_mirror_bot(server_factory):
    server = video_server(server_factory, "mirror")
    peer = Peer(server.url, "av-receive", mode="receive", modality="audio-video")
    try:
        await peer.connect(mode="receive", modality="audio-video")
        await peer.wait_for_frames(10)
        # Audio flows beside the bot's video: a silence packet every IDLE_PACKET_SECONDS, which aiortc's
        # default jitter buffer (this peer's) hands on only once five have arrived.
        for _ in range(40):
            if peer.heard:
                break
            await asyncio.sleep(0.1)
    finally:
        await peer.close()
    assert peer.tracks == 2 and peer.heard
    first, last = peer.seen[0], peer.seen[-1]
    assert first.shape == (240, 320, 3) and np.abs(first[60:].astype(int) - last[60:]).mean() > 2  # it moves


@pytest.mark.parametrize(("bot", "modality", "error"), [
    ("", "video", "this bot handles audio calls, not video"),
    ("", "audio-video", "this bot handles audio calls, not audio-video"),
    ("mirror", "audio", "this bot handles audio-video, video calls, not audio"),
    ("", "hologram", "modality must be one of audio, video, audio-video, not 'hologram'"),
])
async def test_an_unhandled_modality_is_refused(server_factory, bot, modality, error):
    server = video_server(server_factory, bot) if bot else server_factory(concurrency_limit=20, **LOOPBACK_ICE)
    peer = Peer(server.url, f"refused-{modality}", modality="audio-video")
    try:
        response = await post_offer(server.url, {**await peer.offer_body(), "modality": modality})
    finally:
        await peer.close()
    assert response.status_code == 422
    assert response.json()["status"] == "failed" and response.json()["meta"]["error"].startswith(error)


async def test_a_video_offer_without_a_video_line_is_refused(server_factory):
    server = video_server(server_factory, "mirror")
    peer = Peer(server.url, "video-without-camera")  # an audio-only offer
    try:
        response = await post_offer(server.url, await peer.offer_body(), "?modality=video")
    finally:
        await peer.close()
    assert response.status_code == 400
    assert "the offer has no video" in response.json()["meta"]["error"]
    await server.wait_for_log("call video-without-camera ended")  # the refused offer freed its slot


async def test_video_calls_count_against_the_limit_and_end_at_the_time_limit(server_factory):
    server = video_server(server_factory, "Mirror", concurrency_limit=1, webrtc_max_call_seconds=1.5)
    first = Peer(server.url, "video-limited", modality="video")
    try:
        await first.connect(modality="video")
        over = await post_offer(server.url, {**await Peer(server.url, "video-over").offer_body(), "modality": "video"})
        assert over.status_code == 429
        assert over.json() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 1}}
        async with asyncio.timeout(5):
            while first.pc.connectionState == "connected":
                await asyncio.sleep(0.05)
    finally:
        await first.close()
    await server.wait_for_log("webrtc video-limited: ending: time limit of 1.5 s reached")
