"""Bots the drain tests run inside a real server (BOT=tests.integration.drain_bots:NAME)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from callbridge.bots.base import Audio, Bot, BotOutput, Turn

GOODBYE_SECONDS = 2.0
RATE = 8000


class EchoWithLongGoodbye(Bot):
    """Echoes turns; when the service drains, says a goodbye long enough to look at the server while it plays."""

    input_rate = RATE

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        yield Audio(turn.audio, turn.sample_rate)

    async def farewell(self) -> AsyncIterator[BotOutput]:
        t = np.arange(int(GOODBYE_SECONDS * RATE)) / RATE
        yield Audio((np.sin(2 * np.pi * 660 * t) * 8000).astype(np.int16), RATE)
