"""Bots the WebRTC tests run inside a real server (BOT=tests.integration.webrtc_bots:NAME)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np

from callbridge.bots.base import AdditionalOutputs, Audio, Bot, BotOutput, EndCall, Frame, Turn
from callbridge.bots.echo import EchoBot
from callbridge.bots.video import video_handler

GREETING_SECONDS = 0.6
GREETING_RATE = 48000


class GreetAndHangUp(Bot):
    """Talks first (a 440 Hz tone of GREETING_SECONDS), then ends the call: a receive-only bot."""

    async def greet(self) -> AsyncIterator[BotOutput]:
        t = np.arange(int(GREETING_SECONDS * GREETING_RATE)) / GREETING_RATE
        yield Audio((np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16), GREETING_RATE)
        yield EndCall()

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        return
        yield


# -- video (tests/integration/test_webrtc_video.py) ---------------------------------------------------

#: The slow handler's time per frame: several camera frames arrive meanwhile.
SLOW_SECONDS = 0.3


def mirror_frame(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[:, ::-1])


def slow_frame(frame: np.ndarray) -> np.ndarray:
    """Blocks its worker thread, as a heavy model would: the event loop must not notice."""
    time.sleep(SLOW_SECONDS)
    return frame


def tinted_frame(frame: np.ndarray, red: int) -> tuple[np.ndarray, AdditionalOutputs]:
    """Wants an additional input (the red level); tells the client the mean brightness it saw."""
    out = frame.copy()
    out[..., 2] = red
    return out, AdditionalOutputs(float(frame.mean()))


def broken_frame(frame: np.ndarray) -> np.ndarray:
    raise ValueError("no faces here")


def counting_frames() -> Iterator[np.ndarray]:
    """Receive mode: RECEIVE_FRAMES grey frames growing brighter, then the video (and the call) ends."""
    for index in range(RECEIVE_FRAMES):
        yield np.full((240, 320, 3), 40 + 6 * index, np.uint8)


RECEIVE_FRAMES = 30


def frames_at(level: int) -> Iterator[np.ndarray]:
    """Receive mode with an additional input: grey frames of the level the client sets."""
    while True:
        yield np.full((240, 320, 3), int(level), np.uint8)


async def async_mirror_frame(frame: np.ndarray) -> np.ndarray:
    """An `async def` handler: awaited on the event loop."""
    await asyncio.sleep(0)
    return np.ascontiguousarray(frame[:, ::-1])


Mirror = video_handler(mirror_frame)
Slow = video_handler(slow_frame)
Tinted = video_handler(tinted_frame)
Broken = video_handler(broken_frame)
Counting = video_handler(counting_frames)
FramesAt = video_handler(frames_at)
AsyncMirror = video_handler(async_mirror_frame)


class ShowTurnFrame(EchoBot):
    """Audio-video without a live transform: echoes each turn, then shows the camera frame the turn ended on,
    inverted."""

    modalities = frozenset({"audio", "audio-video"})

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        async for item in super().reply(turn):
            yield item
        if turn.frame is not None:
            yield Frame(255 - turn.frame)


def measured_frame(frame: np.ndarray) -> AdditionalOutputs:
    """Shows nothing, tells the client the mean brightness of each frame it is handed (mode `send`)."""
    return AdditionalOutputs(float(frame.mean()))


Measure = video_handler(measured_frame)
