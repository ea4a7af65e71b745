"""Turn detection on real Silero VAD with espeak-ng speech."""

from __future__ import annotations

import numpy as np
import pytest

from callbridge.codec import Rechunker
from callbridge.core.turns import (
    HANGOVER_WINDOWS,
    EndOfTurnQuestion,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
)
from callbridge.core.vad import VAD_WINDOW_MS, VadBatcher
from tests.speech import silence, speech

COMMAS = "Hello, this is a test call, with several commas, in one sentence, and it keeps going."
SHORT = "Please call me back tomorrow morning."


class Turns:
    """The call's inbound path without sockets: 32 ms windows, the VAD batcher production runs, the state
    machine."""

    def __init__(self, model, rate: int, batcher: VadBatcher | None = None, **overrides) -> None:
        self.config = TurnConfig(sample_rate=rate, **overrides)
        self.machine = TurnDetector(self.config)
        self.batcher = batcher or VadBatcher(model, in_thread=False, max_wait=0.0)
        self.events: list = []
        self.vad = self.batcher.stream(rate, self._step)
        self.windows = Rechunker(rate, VAD_WINDOW_MS)

    def _step(self, window: np.ndarray, probability: float) -> None:
        event = self.machine.step(window, probability)
        if event is not None:
            self.events.append(event)

    def windows_in(self, pcm: np.ndarray) -> None:
        for window in self.windows.push(pcm):
            self.vad.submit(window)

    def take_events(self) -> list:
        events, self.events = self.events, []
        return events

    async def push(self, pcm: np.ndarray) -> list:
        self.windows_in(pcm)
        await self.batcher.idle()
        return self.take_events()


def detector(model, rate: int = 8000, **overrides) -> Turns:
    return Turns(model, rate, **overrides)


async def feed(det: Turns, audio: np.ndarray, chunk: int = 160) -> list:
    events = []
    for start in range(0, len(audio), chunk):
        events += await det.push(audio[start : start + chunk])
    await det.batcher.close()
    return events


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("pause_ms", [500, 512, 700])
async def test_turn_ends_within_one_window_of_configured_silence(onnx_vad, rate, pause_ms):
    lead = silence(0.5, rate)
    said = speech(SHORT, rate)
    audio = np.concatenate([lead, said, silence(2.0, rate)])
    det = detector(onnx_vad, rate, pause_ms=pause_ms)
    events = await feed(det, audio)
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ended) == 1
    turn = ended[0]
    window = det.config.window_samples
    # The timer: the configured silence, less the windows of Silero's lingering probability, counted from
    # the end of the last window at or above the exit threshold.
    pause = pause_ms * rate // 1000 - HANGOVER_WINDOWS[rate] * window
    waited = turn.at - turn.speech_end
    assert pause <= waited < pause + window
    # The VAD's end of speech lies close to the true end of the spoken audio.
    true_end = len(lead) + len(said)
    assert abs(turn.speech_end - true_end) <= 4 * window


CORPUS = [
    "Wait, stop, I have a question.", COMMAS, SHORT, "Tell me more about the weather.",
    "I would like to book a table for two at seven.", "My account number is four five six seven.", "Yes.",
    "No, thank you.", "Could you repeat that please?", "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat.",
    "Hello there, how are you today?",
]


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_turns_end_the_configured_silence_after_the_true_end_of_speech(onnx_vad, rate):
    """Against ground truth (where the spoken audio really ends), over 36 utterances in three voices."""
    pause_ms = 512
    window_ms = VAD_WINDOW_MS
    late_by = []
    for voice in ("en-us", "en-gb", "en-us+f3"):
        for text in CORPUS:
            lead, said = silence(0.5, rate), speech(text, rate, voice=voice)
            audio = np.concatenate([lead, said, silence(2.0, rate)])
            events = await feed(detector(onnx_vad, rate, pause_ms=pause_ms), audio)
            ended = [e for e in events if isinstance(e, TurnEnded)]
            assert len(ended) == 1, f"{voice}: {text!r} must be one turn"
            late_by.append((ended[0].at - len(lead) - len(said)) * 1000 / rate - pause_ms)
    # Typically within one window of the configured silence; Silero's hangover varies by a window or two
    # from one utterance to the next, which bounds the spread.
    assert abs(np.median(late_by)) <= window_ms
    assert -2 * window_ms <= min(late_by) and max(late_by) <= 3 * window_ms
    assert np.percentile(late_by, 95) <= 2.5 * window_ms


async def test_sentence_with_commas_is_one_turn(onnx_vad):
    rate = 8000
    said = speech(COMMAS, rate)
    events = await feed(detector(onnx_vad, rate), np.concatenate([silence(0.3, rate), said, silence(1.5, rate)]))
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded]
    assert len(events[1].audio) >= 0.9 * len(said)


async def test_two_sentences_with_a_long_pause_are_two_turns(onnx_vad):
    rate = 8000
    audio = np.concatenate([speech(SHORT, rate), silence(1.0, rate), speech(SHORT, rate), silence(1.0, rate)])
    events = await feed(detector(onnx_vad, rate), audio)
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded, SpeechStarted, TurnEnded]


async def test_preroll_is_in_the_turn_audio(onnx_vad):
    rate = 8000
    lead = silence(1.0, rate)
    said = speech(SHORT, rate)
    audio = np.concatenate([lead, said, silence(1.5, rate)])
    det = detector(onnx_vad, rate, preroll_ms=200)
    events = await feed(det, audio)
    started, ended = events
    window = det.config.window_samples
    preroll_windows = det.config.windows(200)
    turn_start = started.onset - preroll_windows * window
    # The turn audio is exactly the input from the pre-roll on, and starts before the speech does.
    assert turn_start <= len(lead)
    np.testing.assert_array_equal(ended.audio, audio[turn_start : ended.speech_end])
    assert started.onset - turn_start == preroll_windows * window

    no_preroll = await feed(detector(onnx_vad, rate, preroll_ms=0), audio)
    assert len(no_preroll[1].audio) == len(ended.audio) - preroll_windows * window


async def test_max_turn_length_forces_a_turn(onnx_vad):
    rate = 8000
    long_speech = np.concatenate([speech(COMMAS, rate)] * 2)
    det = detector(onnx_vad, rate, max_turn_seconds=2.0)
    events = await feed(det, np.concatenate([long_speech, silence(1.0, rate)]))
    forced = [e for e in events if isinstance(e, TurnEnded) and e.reason == "max_length"]
    assert forced, "a turn longer than the maximum must be cut"
    max_windows = det.config.windows(2000)
    started = next(e for e in events if isinstance(e, SpeechStarted))
    assert forced[0].at - started.onset == max_windows * det.config.window_samples
    assert isinstance(events[-1], TurnEnded) and events[-1].reason == "pause"


async def test_interleaved_calls_decide_as_each_alone(onnx_vad):
    rate = 8000
    a = np.concatenate([silence(0.2, rate), speech(SHORT, rate), silence(1.0, rate), speech(COMMAS, rate),
                        silence(1.0, rate)])
    b = np.concatenate([speech(COMMAS, rate), silence(0.7, rate), speech(SHORT, rate), silence(1.0, rate)])
    alone_a = await feed(detector(onnx_vad, rate), a)
    alone_b = await feed(detector(onnx_vad, rate), b)
    shared = VadBatcher(onnx_vad, in_thread=False, max_wait=0.0)  # one batcher for both calls, as in production
    da, db = Turns(onnx_vad, rate, shared), Turns(onnx_vad, rate, shared)
    mixed_a, mixed_b = [], []
    for start in range(0, max(len(a), len(b)), 160):
        da.windows_in(a[start : start + 160])
        db.windows_in(b[start : start + 160])
        await shared.idle()
        mixed_a += da.take_events()
        mixed_b += db.take_events()
    await shared.close()
    assert shared.batches < shared.windows, "the two calls' windows shared inferences"
    assert summary(mixed_a) == summary(alone_a)
    assert summary(mixed_b) == summary(alone_b)
    assert len(summary(alone_a)) == 4 and len(summary(alone_b)) == 4


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_onnx_and_torch_backends_make_the_same_decisions(onnx_vad, torch_vad, rate):
    audio = np.concatenate([silence(0.3, rate), speech(COMMAS, rate), silence(0.8, rate), speech(SHORT, rate),
                            silence(1.0, rate)])
    via_onnx = summary(await feed(detector(onnx_vad, rate), audio))
    via_torch = summary(await feed(detector(torch_vad, rate), audio))
    assert via_onnx == via_torch
    assert len(via_onnx) == 4


def summary(events: list) -> list[tuple]:
    return [
        (type(e).__name__, e.onset, e.at) if isinstance(e, SpeechStarted) else
        (type(e).__name__, e.reason, e.speech_end, e.at, len(e.audio))
        for e in events
    ]


def run_script(probabilities: list[float], **overrides) -> list:
    """The state machine fed chosen probabilities, to pin down its thresholds and run lengths."""
    machine = TurnDetector(TurnConfig(sample_rate=8000, **overrides))
    steps = (machine.step(np.zeros(256, np.int16), p) for p in probabilities)
    return [event for event in steps if event is not None]


def test_hysteresis_keeps_a_turn_through_middling_probabilities():
    # Start needs 6 windows (192 ms); then 0.4 (between exit 0.35 and enter 0.5) counts as speech.
    events = run_script([0.9] * 6 + [0.4] * 30 + [0.1] * 16)
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded]
    assert events[1].speech_end == 36 * 256


def test_speech_start_needs_a_run_and_a_dip_resets_it():
    assert run_script([0.9] * 5 + [0.1] + [0.9] * 5) == []
    events = run_script([0.9] * 5 + [0.1] + [0.9] * 6)
    assert [type(e) for e in events] == [SpeechStarted]
    assert events[0].onset == 6 * 256


def test_middling_probability_alone_does_not_start_speech():
    assert run_script([0.45] * 40) == []


# -- the end-of-turn model's questions (END_OF_TURN=model): asked by the detector, answered by the caller ----------

SPEECH, QUIET = 0.9, 0.1
WINDOW = 256  # samples of one 32 ms window at 8 kHz
ASK_AT = 5  # ask_ms=200: 7 windows less Silero's 2 of hangover
PAUSE_AT = 14  # pause_ms=512: 16 windows less 2


class Scripted:
    """The state machine at 8 kHz with questions asked at 200 ms, fed chosen probabilities."""

    def __init__(self, **overrides) -> None:
        self.machine = TurnDetector(TurnConfig(sample_rate=8000, **{"ask_ms": 200, **overrides}))
        self.events: list = []

    def feed(self, *probabilities: float) -> list:
        new = [e for p in probabilities if (e := self.machine.step(np.zeros(WINDOW, np.int16), p)) is not None]
        self.events += new
        return new

    def questions(self) -> list[EndOfTurnQuestion]:
        return [e for e in self.events if isinstance(e, EndOfTurnQuestion)]


def test_a_pause_of_ask_ms_raises_one_question_about_the_turn_so_far():
    det = Scripted()
    det.feed(*[SPEECH] * 10)
    assert det.feed(*[QUIET] * (ASK_AT - 1)) == []
    (question,) = det.feed(QUIET)
    assert isinstance(question, EndOfTurnQuestion)
    assert question.speech_end == 10 * WINDOW and question.at == (10 + ASK_AT) * WINDOW
    assert len(question.audio) == (10 + ASK_AT) * WINDOW  # the pause so far is heard too
    # Unanswered, the pause ends the turn as the silence rule does, and the pause asked only once.
    rest = det.feed(*[QUIET] * (PAUSE_AT - ASK_AT))
    assert [type(e) for e in rest] == [TurnEnded] and rest[0].reason == "pause"
    assert rest[0].at == (10 + PAUSE_AT) * WINDOW and len(det.questions()) == 1


def test_an_answer_at_the_threshold_ends_the_turn_at_once_with_reason_model():
    det = Scripted(model_threshold=0.7)
    det.feed(*[SPEECH] * 10, *[QUIET] * ASK_AT, QUIET, QUIET)  # two windows pass while the model thinks
    ended = det.machine.answer(det.questions()[0], 0.7)
    assert isinstance(ended, TurnEnded) and ended.reason == "model"
    assert ended.speech_end == 10 * WINDOW and ended.at == (10 + ASK_AT + 2) * WINDOW
    assert len(ended.audio) == 10 * WINDOW  # up to the last speech window, as a pause's turn
    assert det.feed(*[QUIET] * 20) == []  # the turn is over: no second end, no question


def test_an_answer_below_the_threshold_leaves_the_pause_to_end_the_turn():
    det = Scripted()
    det.feed(*[SPEECH] * 10, *[QUIET] * ASK_AT)
    assert det.machine.answer(det.questions()[0], 0.49) is None
    assert det.machine.answer(det.questions()[0], 0.99) is None  # one answer per question
    rest = det.feed(*[QUIET] * (PAUSE_AT - ASK_AT))
    assert [(type(e), e.reason) for e in rest] == [(TurnEnded, "pause")]


def test_speech_resuming_makes_the_question_stale_and_the_next_pause_asks_again():
    det = Scripted()
    det.feed(*[SPEECH] * 10, *[QUIET] * ASK_AT)
    first = det.questions()[0]
    det.feed(SPEECH)
    assert not det.machine.is_open(first)
    assert det.machine.answer(first, 0.99) is None  # came too late: the caller spoke again
    det.feed(*[SPEECH] * 5, *[QUIET] * ASK_AT)
    second = det.questions()[1]
    assert second.number == first.number + 1 and second.speech_end == (10 + ASK_AT + 6) * WINDOW
    assert det.machine.answer(first, 0.99) is None  # an old question never ends the new pause
    ended = det.machine.answer(second, 0.99)
    assert ended is not None and ended.reason == "model" and ended.speech_end == second.speech_end


def test_an_answer_after_the_pause_ended_the_turn_is_ignored_and_leaves_the_next_turn_alone():
    det = Scripted()
    det.feed(*[SPEECH] * 10, *[QUIET] * PAUSE_AT)
    late = det.questions()[0]
    assert det.machine.answer(late, 0.99) is None
    det.feed(*[SPEECH] * 10, *[QUIET] * (ASK_AT - 1))
    assert det.machine.answer(late, 0.99) is None
    assert [e.reason for e in det.events if isinstance(e, TurnEnded)] == ["pause"]


@pytest.mark.parametrize("overrides", [{"ask_ms": None}, {"ask_ms": 512}, {"ask_ms": 600}])
def test_no_questions_without_the_model_or_when_the_pause_ends_first(overrides):
    det = Scripted(**overrides)
    det.feed(*[SPEECH] * 10, *[QUIET] * PAUSE_AT)
    assert det.questions() == []
    assert [type(e) for e in det.events] == [SpeechStarted, TurnEnded]


EVERY = 4  # ask_every_ms=128: 4 windows


def test_with_ask_every_ms_the_pause_asks_again_until_it_ends_and_the_newest_question_decides():
    det = Scripted(ask_every_ms=128)
    det.feed(*[SPEECH] * 10, *[QUIET] * PAUSE_AT)
    asked = det.questions()
    # At ASK_AT, then every EVERY windows of the same pause while it is short of PAUSE_AT.
    assert [q.at for q in asked] == [(10 + n) * WINDOW for n in range(ASK_AT, PAUSE_AT, EVERY)]
    assert [q.in_pause for q in asked] == [1, 2, 3]
    assert [q.number for q in asked] == [1, 2, 3]
    assert all(q.speech_end == 10 * WINDOW and len(q.audio) == q.at for q in asked)  # the silence grows
    assert [e.reason for e in det.events if isinstance(e, TurnEnded)] == ["pause"]


def test_a_later_question_of_the_pause_can_end_the_turn_and_makes_the_earlier_stale():
    det = Scripted(ask_every_ms=128)
    det.feed(*[SPEECH] * 10, *[QUIET] * ASK_AT)
    first = det.questions()[0]
    assert det.machine.answer(first, 0.2) is None  # incomplete: the pause goes on and asks again
    det.feed(*[QUIET] * EVERY)
    second = det.questions()[1]
    assert not det.machine.is_open(first) and det.machine.answer(first, 0.99) is None
    ended = det.machine.answer(second, 0.9)
    assert ended is not None and ended.reason == "model" and ended.speech_end == 10 * WINDOW
    assert ended.at == (10 + ASK_AT + EVERY) * WINDOW
    # A new turn's pause starts counting its questions from one again.
    det.feed(*[SPEECH] * 10, *[QUIET] * ASK_AT)
    assert det.questions()[-1].in_pause == 1 and det.questions()[-1].number == 3


def test_an_unanswered_question_is_superseded_by_the_next_one():
    det = Scripted(ask_every_ms=128)
    det.feed(*[SPEECH] * 10, *[QUIET] * (ASK_AT + EVERY))
    first, second = det.questions()
    assert not det.machine.is_open(first) and det.machine.is_open(second)
    det.feed(SPEECH)  # and the caller speaking again makes the newest stale too
    assert not det.machine.is_open(second)
