"""Bots the WebRTC tests run inside a real server (BOT=tests.integration.webrtc_bots:NAME)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from callbridge.bots.base import Audio, Bot, BotOutput, EndCall, Turn

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
