"""A browser stand-in for the WebRTC tests: an aiortc peer with a microphone, a camera, a data channel and
recorders, on 127.0.0.1 only (import `loopback_ice` into a test module to apply it there)."""

from __future__ import annotations

import asyncio
import fractions
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import av
import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 48000
FRAME = RATE // 50
#: A server's first offer imports aiortc and PyAV (the signalling route loads them then): ~1 s on this machine, more
#: than httpx's default 5 s when other work fills both cores.
OFFER_TIMEOUT = 30.0
#: Puts this folder's sitecustomize on the server's path: its aioice offers 127.0.0.1 only (test code only).
LOOPBACK_ICE = {"pythonpath": str(Path(__file__).parent / "loopback_ice")}


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own peer gathers 127.0.0.1 only, so no packet leaves the loopback interface."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class SpeechTrack(MediaStreamTrack):
    """The caller's microphone: plays `script` (48 kHz int16) in real time, then silence, in 20 ms frames.

    `script` may grow while the call runs (`say`), as a person speaks again."""

    kind = "audio"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self.script = samples
        self.position = 0
        self._start: float | None = None

    def say(self, samples: np.ndarray) -> float:
        """Queue `samples` right after what has been played; returns the loop time their playback starts."""
        played = self.script[: self.position]
        self.script = np.concatenate([played, np.zeros(self.position - len(played), np.int16), samples])
        return asyncio.get_running_loop().time()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self.position / RATE - loop.time()))
        chunk = self.script[self.position : self.position + FRAME]
        chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        # Stereo like Chromium's capture: aiortc's encoder would mix mono up at -3 dB.
        frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.time_base, frame.pts = RATE, fractions.Fraction(1, RATE), self.position
        self.position += FRAME
        return frame


#: The test camera's rate: twice VIDEO_FPS' default, as a webcam's 30 fps is.
CAMERA_FPS = 30
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


def gradient(index: int, height: int = 240, width: int = 320) -> np.ndarray:
    """A BGR frame dark on the left, bright on the right: mirrored, it is bright on the left."""
    row = np.linspace(0, 255, width).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


class CameraTrack(MediaStreamTrack):
    """The caller's camera: `pattern(n)` for frame n, in real time at CAMERA_FPS."""

    kind = "video"

    def __init__(self, pattern: Callable[[int], np.ndarray] = gradient) -> None:
        super().__init__()
        self.pattern = pattern
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self.sent / CAMERA_FPS - loop.time()))
        frame = av.VideoFrame.from_ndarray(self.pattern(self.sent), format="bgr24")
        frame.pts, frame.time_base = round(self.sent * 90000 / CAMERA_FPS), VIDEO_TIME_BASE
        self.sent += 1
        return frame


@dataclass
class Peer:
    """A browser stand-in: an aiortc peer with a data channel, a microphone and a camera as the modality needs, and
    recorders of what it hears and sees."""

    url: str
    call_id: str
    mode: str = "send-receive"
    modality: str = "audio"
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    microphone: SpeechTrack = field(default_factory=lambda: SpeechTrack(np.zeros(0, np.int16)))
    messages: list[tuple[float, Any]] = field(default_factory=list)
    heard: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival time, 48 kHz mono)
    camera: CameraTrack = field(default_factory=CameraTrack)
    seen: list[np.ndarray] = field(default_factory=list)  # video frames received, (H, W, 3) uint8 BGR
    tracks: int = 0
    _recorders: list[asyncio.Task[None]] = field(default_factory=list)
    _waiters: list[tuple[Callable[[Any], bool], asyncio.Future[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.channel = self.pc.createDataChannel("text")
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        kinds = {"audio": [self.microphone], "video": [self.camera], "audio-video": [self.microphone, self.camera]}
        for track in kinds[self.modality]:
            if self.mode == "receive":
                self.pc.addTransceiver(track.kind, direction="recvonly")
            else:
                self.pc.addTrack(track)

    @property
    def logs(self) -> list[str]:
        return [data for _, message in self.messages if message["type"] == "log" for data in [message["data"]]]

    @property
    def reply(self) -> np.ndarray:
        return self.heard_between(0.0, float("inf"))

    def heard_between(self, start: float, end: float) -> np.ndarray:
        frames = [samples for t, samples in self.heard if start <= t < end]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def log_time(self, data: str) -> float:
        return next(t for t, message in self.messages if message == {"type": "log", "data": data})

    def _on_message(self, raw: str) -> None:
        message = json.loads(raw)
        self.messages.append((asyncio.get_running_loop().time(), message))
        for predicate, future in self._waiters:
            if not future.done() and predicate(message):
                future.set_result(None)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.tracks += 1
        if track.kind == "video":
            self._recorders.append(asyncio.ensure_future(self._watch(track)))
            return

        async def record() -> None:
            to_mono = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                now = asyncio.get_running_loop().time()
                self.heard.extend((now, f.to_ndarray().reshape(-1)) for f in to_mono.resample(frame))

        self._recorders.append(asyncio.ensure_future(record()))

    async def _watch(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.seen.append(frame.to_ndarray(format="bgr24"))

    async def wait_for_frames(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                await asyncio.sleep(0.02)

    async def wait_for_message(self, predicate: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        """The first data-channel message `predicate` accepts, received already or awaited."""
        for _, message in self.messages:
            if predicate(message):
                return message
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, timeout)
        return next(message for _, message in self.messages if predicate(message))

    async def offer_body(self) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.call_id}

    async def connect(self, **body: Any) -> None:
        """Offer, apply the answer, and wait until the connection is up."""
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT) as http:
            response = await http.post(f"{self.url}/webrtc/offer", json={**await self.offer_body(), **body})
        assert response.status_code == 200, response.text
        await self.pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await self.wait_connected()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected" or self.channel.readyState != "open":
                await asyncio.sleep(0.02)

    async def wait_for_log(self, data: str, *, count: int = 1, timeout: float = 20.0) -> None:
        if self.logs.count(data) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((lambda m: m == {"type": "log", "data": data} and self.logs.count(data) >= count, future))
        await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        await self.pc.close()


async def post_offer(url: str, body: Any, query: str = "") -> httpx.Response:
    async with httpx.AsyncClient(timeout=OFFER_TIMEOUT) as http:
        return await http.post(f"{url}/webrtc/offer{query}", json=body)
