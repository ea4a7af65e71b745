"""Streaming turn detection on Silero VAD windows (sans-I/O: audio in, events out).

Decisions are made per 32 ms window and counted in samples, never in wall-clock time, so the same
audio always gives the same turns. Speech starts after `speech_start_ms` of consecutive speech
windows (entered at p >= enter; once a run has begun, p >= exit keeps it going). A turn ends
`pause_ms` after the caller stopped speaking, or when it reaches `max_turn_seconds`. The turn's audio
starts `preroll_ms` before its first speech window and ends with its last speech window.

Silero's probability lingers above the exit threshold for a few windows after speech stops (its
recurrent state decays): a median 2-3 windows at 8 kHz and 1-2 at 16 kHz on the espeak-ng corpus
(tests/unit/test_turns.py). Those lingering windows are already silence to the caller, so they count
toward the pause: the turn ends after `pause_ms` less `HANGOVER_WINDOWS` of windows below the threshold.

With `ask_ms` set, a pause of `ask_ms` (counted the same way) also raises an EndOfTurnQuestion: the bot
may start on the turn then (Bot.on_pause), and with END_OF_TURN=model the caller answers it with the
end-of-turn model's probability (`answer`); a probability of at least `model_threshold` ends the turn
there (reason "model"); otherwise the pause goes on to `pause_ms`. With `ask_every_ms`, the same pause asks
again every `ask_every_ms` until `pause_ms` (the model hears the silence grow: a finished sentence it scores
incomplete at 150 ms may score complete at 300, so `pause_ms` can be long enough to keep commas in one turn);
else each pause asks once. A newer question, speech resuming, or the turn ending makes a question stale. The
detector does no inference itself, so its decisions stay a function of the probabilities fed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from callbridge.core.vad import WINDOW_SAMPLES

#: Windows of Silero's lingering probability after speech stops that count toward the pause (see above).
HANGOVER_WINDOWS = {8000: 2, 16000: 1}


@dataclass(frozen=True)
class TurnConfig:
    sample_rate: int
    enter_threshold: float = 0.5
    exit_threshold: float = 0.35
    speech_start_ms: int = 192
    pause_ms: int = 512
    preroll_ms: int = 200
    max_turn_seconds: float = 30.0
    ask_ms: int | None = None  # None: the silence rule alone (END_OF_TURN=silence)
    ask_every_ms: int = 0  # 0: one question per pause; else asked again every ask_every_ms until pause_ms
    model_threshold: float = 0.5

    def at(self, sample_rate: int) -> TurnConfig:
        """The same settings for audio at `sample_rate` (a call's VAD rate)."""
        return replace(self, sample_rate=sample_rate)

    @property
    def window_samples(self) -> int:
        return WINDOW_SAMPLES[self.sample_rate]

    def windows(self, ms: float) -> int:
        """How many whole windows cover `ms` milliseconds."""
        return math.ceil(ms * self.sample_rate / 1000 / self.window_samples)


@dataclass(frozen=True)
class SpeechStarted:
    """The caller has been speaking for `speech_start_ms`; `onset` is the first speech sample."""

    onset: int
    at: int


@dataclass(frozen=True)
class TurnEnded:
    """A complete caller turn. Sample positions count from the start of the call's audio."""

    audio: np.ndarray
    reason: Literal["pause", "max_length", "model"]
    speech_end: int
    at: int


@dataclass(frozen=True)
class EndOfTurnQuestion:
    """The caller has been silent `ask_ms`: is the turn complete? `audio` runs from the turn's pre-roll to
    now, the pause so far included (as the model was evaluated and as Pipecat feeds it: the silence after the
    last word is part of what it hears); `number` tells it from every other question of the call, and
    `in_pause` counts this pause's questions (1: its first, when the bot is shown the turn)."""

    audio: np.ndarray
    number: int
    in_pause: int
    speech_end: int
    at: int


TurnEvent = SpeechStarted | TurnEnded | EndOfTurnQuestion


class TurnDetector:
    """The turn state machine: one (window, speech probability) at a time in, turn events out."""

    def __init__(self, config: TurnConfig) -> None:
        self.config = config
        self._start_windows = config.windows(config.speech_start_ms)
        self._pause_windows = max(1, config.windows(config.pause_ms) - HANGOVER_WINDOWS[config.sample_rate])
        self._max_windows = config.windows(config.max_turn_seconds * 1000)
        # 0: never ask (no model, or a pause that ends the turn before the question could be asked).
        ask_windows = 0 if config.ask_ms is None else max(1, config.windows(config.ask_ms) - HANGOVER_WINDOWS[
            config.sample_rate])
        self._ask_windows = ask_windows if ask_windows < self._pause_windows else 0
        self._ask_every_windows = config.windows(config.ask_every_ms) if config.ask_every_ms else 0
        self._questions = 0  # questions asked so far; the last one is open while `_open_question` is set
        self._open_question = False
        self._position = 0  # samples of audio stepped through so far
        self._recent: deque[np.ndarray] = deque(maxlen=config.windows(config.preroll_ms) + self._start_windows)
        self._run = 0  # consecutive speech windows while not yet speaking
        self._speaking = False
        self._turn: list[np.ndarray] = []
        self._turn_speech_windows = 0  # windows in _turn up to and including the last speech window
        self._silence = 0
        self._turn_windows = 0

    @property
    def speaking(self) -> bool:
        """The caller is in a turn: from its speech start until the pause (or length) that ends it."""
        return self._speaking

    @property
    def speech_end(self) -> int:
        """While speaking: the sample position just past the turn's last speech window so far (a turn's
        `speech_end` once it ends), so the speech's length is known before the turn ends."""
        return self._position - (len(self._turn) - self._turn_speech_windows) * self.config.window_samples

    def step(self, window: np.ndarray, p: float) -> TurnEvent | None:
        """Advance by one VAD window (int16, `config.window_samples` long) whose speech probability is p."""
        cfg = self.config
        if len(window) != cfg.window_samples:
            raise ValueError(f"windows must be {cfg.window_samples} samples, got {len(window)}")
        self._position += cfg.window_samples
        if not self._speaking:
            self._recent.append(window)
            if p >= cfg.enter_threshold or (self._run and p >= cfg.exit_threshold):
                self._run += 1
            else:
                self._run = 0
            if self._run < self._start_windows:
                return None
            self._speaking = True
            self._turn = list(self._recent)
            self._turn_speech_windows = len(self._turn)
            self._turn_windows = self._run
            self._silence = 0
            onset = self._position - self._run * cfg.window_samples
            return SpeechStarted(onset=onset, at=self._position)

        self._turn.append(window)
        self._turn_windows += 1
        if p >= cfg.exit_threshold:
            self._silence = 0
            self._turn_speech_windows = len(self._turn)
            self._open_question = False  # the caller spoke again: the pause's question is stale
        else:
            self._silence += 1
        if self._silence >= self._pause_windows:
            return self._end("pause")
        if self._turn_windows >= self._max_windows:
            return self._end("max_length")
        if in_pause := self._question_in_pause():
            self._questions += 1
            self._open_question = True
            return EndOfTurnQuestion(audio=np.concatenate(self._turn), number=self._questions, in_pause=in_pause,
                                     speech_end=self._speech_end(), at=self._position)
        return None

    def _question_in_pause(self) -> int:
        """Which of the pause's questions is due at this window (1, 2, ...), or 0 for none."""
        since_first = self._silence - self._ask_windows
        if not self._ask_windows or since_first < 0:
            return 0
        if since_first == 0:
            return 1
        if self._ask_every_windows and since_first % self._ask_every_windows == 0:
            return 1 + since_first // self._ask_every_windows
        return 0

    def answer(self, question: EndOfTurnQuestion, probability: float) -> TurnEnded | None:
        """The model's probability that the turn `question` asked about is complete. It ends the turn now if it
        reaches the threshold and the question is still open (same pause, turn not ended); else nothing."""
        if not self.is_open(question):
            return None
        self._open_question = False
        return self._end("model") if probability >= self.config.model_threshold else None

    def is_open(self, question: EndOfTurnQuestion) -> bool:
        """Whether an answer to `question` could still end the turn: the caller has not spoken since."""
        return self._open_question and question.number == self._questions

    def _speech_end(self) -> int:
        """Position just after the turn's last speech window."""
        return self._position - (len(self._turn) - self._turn_speech_windows) * self.config.window_samples

    def _end(self, reason: Literal["pause", "max_length", "model"]) -> TurnEnded:
        kept = self._turn if reason == "max_length" else self._turn[: self._turn_speech_windows]
        audio = np.concatenate(kept)
        speech_end = self._position if reason == "max_length" else self._speech_end()
        self._speaking = False
        self._open_question = False
        self._turn = []
        self._run = 0
        self._recent.clear()
        return TurnEnded(audio=audio, reason=reason, speech_end=speech_end, at=self._position)
