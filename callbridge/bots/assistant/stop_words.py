"""Stop words (STOP_WORDS): a turn goes to the bot only when the caller said one, as FastRTC's ReplyOnStopWords.

The turn gate the Call asks (callbridge.core.gate.TurnGate), offline: the local Whisper tiny.en (the model the
assistant's speech-to-text loads, once per process, on its one transcription thread) transcribes the turn and
the words are looked for in the text, whole words, whatever the case and punctuation.

Phone-band audio (8 kHz) is decoded with the stop words as faster-whisper's hotwords: without that hint
tiny.en heard "computer" in 72 % of the espeak-ng phone turns that held it ("come to you"), with it in 88 %, at
the price of hearing it in most "commuter"s (no ordinary turn got through either way); at 16 kHz it hears the
word without help (94 %) and the hint only adds false alarms (bench/stop_words.py, bench/results/stop_words.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from callbridge.bots.assistant.stt import LocalWhisper

logger = logging.getLogger("callbridge.stop_words")

#: Below this rate a turn is phone-band audio, decoded with the stop words as hotwords ("narrowband").
WIDEBAND_RATE = 16000
Hint = Literal["narrowband", "always", "never"]


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation; "Computer's" is "computer", "hey-computer" two words."""
    text = re.sub(r"['’]s\b", "", text.lower())
    return re.findall(r"[a-z0-9]+", text.replace("'", "").replace("’", ""))


class StopWords:
    """The configured stop words (or phrases, such as "hey computer") and where a transcript holds one."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = [word.strip() for word in words if words_of(word)]
        if not self.words:
            raise ValueError("no stop word given")
        self._phrases = [(word, words_of(word)) for word in self.words]

    def find(self, text: str) -> str | None:
        """The first stop word (as configured) that `text` holds as whole words, in order; None if none."""
        heard = words_of(text)
        for word, phrase in self._phrases:
            size = len(phrase)
            if any(heard[i : i + size] == phrase for i in range(len(heard) - size + 1)):
                return word
        return None


class WhisperStopWords:
    """A TurnGate: the local Whisper transcribes the turn, StopWords looks for the words in the text.

    `timeout` counts from when the turn's transcription starts (LocalWhisper), so a busy thread delays turns
    rather than failing them; past it the transcription raises and the Call warns and ignores the turn."""

    def __init__(self, words: Sequence[str], timeout: float, hint: Hint = "narrowband",
                 model_dir: Path | None = None) -> None:
        self.stop_words = StopWords(words)
        self.hint = hint
        self._whisper = LocalWhisper(model_dir, timeout)

    def load(self) -> None:
        """Load the model now (at start-up, before the service reports ready)."""
        self._whisper.load()

    def hotwords(self, sample_rate: int) -> str:
        """The hint the decoder gets for audio at `sample_rate` (empty: none)."""
        if self.hint == "always" or (self.hint == "narrowband" and sample_rate < WIDEBAND_RATE):
            return " ".join(self.stop_words.words)
        return ""

    async def transcript(self, audio: np.ndarray, sample_rate: int) -> str:
        return await self._whisper.transcribe(audio, sample_rate, hotwords=self.hotwords(sample_rate))

    async def admits(self, audio: np.ndarray, sample_rate: int) -> str | None:
        text = await self.transcript(audio, sample_rate)
        word = self.stop_words.find(text)
        logger.debug("stop words: heard %r: %s", text, word or "none")
        return word
