"""Which caller turns go to the bot: the contract of a turn gate (STOP_WORDS, FastRTC's ReplyOnStopWords).

The Call asks its gate about each turn before the bot hears it. The gate's implementation lives outside the
core (callbridge.bots.assistant.stop_words spots the words with the local Whisper) and is handed to each
Call where Calls are made (callbridge.services), so the core imports no speech model.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TurnGate(Protocol):
    async def admits(self, audio: np.ndarray, sample_rate: int) -> str | None:
        """The stop word the turn (int16 mono at `sample_rate`) holds, or None: the turn is not for the bot.

        It runs off the event loop and gives up within its own timeout by raising: the Call takes a raise as
        "not admitted" and warns, so a slow or broken gate costs a turn, never the call."""
        ...
