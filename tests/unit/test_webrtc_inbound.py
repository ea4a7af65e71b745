"""The caller's audio on its way in: packets in arrival order, and the shortcut past aiortc's receive path, between
two real aiortc peers on 127.0.0.1 in this process."""

from __future__ import annotations

import asyncio

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from callbridge.edge.inbound import MAX_CONCEALED, REORDER_PACKETS, ArrivalOrder, CallerAudio
from callbridge.edge.opus import RTP_FRAME, RTP_RATE, VOICE_RATE, VoiceEncoder

FRAME = VOICE_RATE // 50


def test_packets_go_on_as_soon_as_they_are_next() -> None:
    order = ArrivalOrder(65534)
    assert order.add(65534, b"a") == [b"a"]
    assert order.add(0, b"c") == []  # 65535 is late: 0 waits for it (across the wrap)
    assert order.add(65535, b"b") == [b"b", b"c"]
    assert order.add(65535, b"b") == []  # a repeat is dropped
    assert order.add(1, b"d") == [b"d"]


def test_a_lost_packet_is_given_up_once_others_wait_behind_it() -> None:
    order = ArrivalOrder(10)
    assert order.add(10, b"a") == [b"a"]
    waiting = [order.add(12 + k, bytes([k])) for k in range(REORDER_PACKETS - 1)]
    assert waiting == [[]] * (REORDER_PACKETS - 1)
    # The last one to wait gives 11 up: None (conceal it), then everything behind it.
    assert order.add(12 + REORDER_PACKETS - 1, b"z") == [None, *[bytes([k]) for k in range(REORDER_PACKETS - 1)],
                                                         b"z"]
    assert order.add(11, b"late") == []


def test_a_long_gap_is_skipped_with_little_concealment() -> None:
    order = ArrivalOrder(0)
    out: list[bytes | None] = []
    for k in range(REORDER_PACKETS):
        out += order.add(1000 + k, b"x")
    assert out == [None] * MAX_CONCEALED + [b"x"] * REORDER_PACKETS


class Tone(MediaStreamTrack):
    """A microphone playing a 500 Hz tone in real time, coded as callbridge's bench callers code theirs."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.encoder = VoiceEncoder(RTP_RATE)
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self._start = self._start or loop.time()
        await asyncio.sleep(max(0.0, self._start + self.sent * RTP_FRAME / RTP_RATE - loop.time()))
        t = (self.sent * RTP_FRAME + np.arange(RTP_FRAME)) / RTP_RATE
        self.sent += 1
        return self.encoder.packet((8000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16), (self.sent - 1) * RTP_FRAME)


async def test_the_shortcut_takes_the_stream_once_aiortc_has_seen_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    speaker, listener = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(
        RTCConfiguration(iceServers=[]))
    heard: list[np.ndarray] = []
    inbound = CallerAudio(heard.append)
    connected = asyncio.Event()

    @listener.on("connectionstatechange")
    def on_state() -> None:
        if listener.connectionState == "connected" and not connected.is_set():
            connected.set()
            inbound.shortcut()

    tone = Tone()
    try:
        speaker.addTrack(tone)
        speaker.createDataChannel("text")  # DTLS application data keeps going through aiortc
        await speaker.setLocalDescription(await speaker.createOffer())
        await listener.setRemoteDescription(speaker.localDescription)
        inbound.install(next(t for t in listener.getTransceivers() if t.kind == "audio").receiver)
        await listener.setLocalDescription(await listener.createAnswer())
        await speaker.setRemoteDescription(listener.localDescription)
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(1.0)
        sent = tone.sent
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
