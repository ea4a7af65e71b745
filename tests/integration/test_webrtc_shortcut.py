"""The shortcut past aiortc's receive path (edge/inbound.py `CallerAudio`), between two real aiortc peers on
127.0.0.1 in this process: the speaker codes its microphone with aiortc's own encoder, as a browser stand-in."""

from __future__ import annotations

import asyncio

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from callbridge.edge.inbound import CallerAudio
from callbridge.edge.opus import VOICE_RATE
from tests.integration.webrtc_peer import (
    RATE,
    SpeechTrack,
    loopback_ice,  # noqa: F401 (an autouse fixture)
)

FRAME = VOICE_RATE // 50


async def test_the_shortcut_takes_the_stream_once_aiortc_has_seen_it() -> None:
    speaker, listener = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    heard: list[np.ndarray] = []
    inbound = CallerAudio(heard.append)
    connected = asyncio.Event()

    @listener.on("connectionstatechange")
    def on_state() -> None:
        if listener.connectionState == "connected" and not connected.is_set():
            connected.set()
            inbound.shortcut()

    t = np.arange(5 * RATE) / RATE
    microphone = SpeechTrack((8000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16))  # 500 Hz, 48 kHz
    try:
        speaker.addTrack(microphone)
        speaker.createDataChannel("text")  # DTLS application data keeps going through aiortc
        await speaker.setLocalDescription(await speaker.createOffer())
        await listener.setRemoteDescription(speaker.localDescription)
        inbound.install(next(t for t in listener.getTransceivers() if t.kind == "audio").receiver)
        await listener.setLocalDescription(await listener.createAnswer())
        await speaker.setRemoteDescription(listener.localDescription)
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(1.0)
        sent = microphone.position // (RATE // 50)
        await asyncio.sleep(0.1)
    finally:
        await speaker.close()
        await listener.close()
    audio = np.concatenate(heard)
    # Every packet was heard once, in order, at the Call's rate; all but the first few by the shortcut.
    assert abs(len(audio) - sent * FRAME) <= 6 * FRAME
    assert inbound.shortcut_packets >= len(heard) - 3
    spectrum = np.abs(np.fft.rfft(audio[FRAME:].astype(np.float64)))
    assert abs(np.argmax(spectrum) * VOICE_RATE / (2 * (len(spectrum) - 1)) - 500) < 10
    assert np.max(np.abs(np.diff(audio[FRAME:].astype(np.int32)))) < 2000  # no gap or repeat: a smooth tone
    # aiortc's statistics (its receiver reports) still count every packet.
    stats = next(iter(inbound.receiver._RTCRtpReceiver__remote_streams.values()))
    assert stats.packets_received == len(heard)
