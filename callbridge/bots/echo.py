"""The echo bot: says the caller's own turn back. The default bot, and the reference for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from callbridge.bots.base import Audio, Bot, BotOutput, Turn

#: Echoed audio is yielded in pieces of this length, as a real text-to-speech bot streams its reply.
CHUNK_SECONDS = 0.1


class EchoBot(Bot):
    input_rate = None  # the caller's own audio, at the call's own rate: nothing to resample

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        step = int(turn.sample_rate * CHUNK_SECONDS)
        for start in range(0, len(turn.audio), step):
            yield Audio(turn.audio[start : start + step], turn.sample_rate)
