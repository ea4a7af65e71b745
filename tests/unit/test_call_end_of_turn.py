"""END_OF_TURN=model in the call runtime: real Silero VAD, the real Smart Turn model on its own thread,
espeak-ng speech pushed as a transport would, no sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest

from callbridge.bots.base import BotOutput, CallInfo, Turn
from callbridge.bots.echo import EchoBot
from callbridge.core.call import Call
from callbridge.core.end_of_turn import EndOfTurnAsker, EndOfTurnModel
from callbridge.core.messages import AudioOut
from callbridge.core.turns import EndOfTurnQuestion, TurnConfig, TurnEvent
from callbridge.core.vad import VadBatcher
from callbridge.metrics import Metrics
from callbridge.sessions.registry import MemoryRegistry
from tests.speech import silence, speech, split_at_longest_pause
from tests.unit.call_outbox import settle, take_all

RATE = 8000
FRAME = 160
# Scored complete at 200 ms of silence in every rendering tried (0.95-0.98: en-us, en-gb, the simulator's voice).
FINISHED = "Please call me back tomorrow morning."
# Its pause after "come in", made 0.35 s long, scores 0.01-0.07 in the same renderings: the caller has more to say.
HESITATING = "If it is not too late, I would like to come in, preferably in the morning."
ASKED = 0.35  # seconds of silence pushed: past END_OF_TURN_ASK_MS (200) and Silero's hangover, short of PAUSE_MS


@pytest.fixture(scope="module")
def model() -> EndOfTurnModel:
    return EndOfTurnModel()


@pytest.fixture
async def metrics_and_asker(model) -> AsyncIterator[tuple[Metrics, EndOfTurnAsker]]:
    metrics = Metrics()
    asker = EndOfTurnAsker(model, on_inference=metrics.end_of_turn_inference_done)
    yield metrics, asker
    asker.close()


@pytest.fixture
async def fast_vad(onnx_vad) -> AsyncIterator[VadBatcher]:
    """The VAD on the event loop with no pacing: what a test pushes is stepped through in a few ms, far sooner than
    the model's ~50 ms answer. So a question from a pause inside what was pushed is always stale (the caller spoke
    again), and one from the silence at its end is answered while that pause still goes on, as in a live call."""
    batcher = VadBatcher(onnx_vad, in_thread=False, max_wait=0.0)
    yield batcher
    await batcher.close()


def make_call(vad, metrics: Metrics, asker: EndOfTurnAsker) -> Call:
    session = MemoryRegistry(10).open_here("c1", "test")
    return Call(session, EchoBot(CallInfo(call_id="c1", transport="test")), vad, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE, ask_ms=200, model_threshold=0.5),
                observer=metrics, end_of_turn=asker)


async def push(call: Call, audio: np.ndarray) -> None:
    for start in range(0, len(audio), FRAME):
        call.push_audio(audio[start : start + FRAME])
    await settle(call)


def answers(metrics: Metrics) -> dict[str, float]:
    registry = metrics.registry
    return {answer: registry.get_sample_value("callbridge_end_of_turn_questions_total", {"answer": answer}) or 0.0
            for answer in ("complete", "incomplete", "stale")}


async def answered(metrics: Metrics, answer: str, count: int = 1) -> dict[str, float]:
    """The questions' answers once `count` of them are `answer` (the model takes ~50 ms each)."""
    for _ in range(500):
        if answers(metrics)[answer] >= count:
            await settle()
            return answers(metrics)
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {count} {answer} answers: {answers(metrics)}")


def turn_reasons(caplog) -> list[str]:
    return [record.reason for record in caplog.records if getattr(record, "event", "") == "turn"]


async def test_a_finished_sentence_ends_its_turn_on_the_models_word(fast_vad, metrics_and_asker, caplog):
    caplog.set_level(logging.INFO, "callbridge.call")
    metrics, asker = metrics_and_asker
    call = make_call(fast_vad, metrics, asker)
    call.start()
    said = speech(FINISHED, RATE)
    await push(call, np.concatenate([silence(0.4, RATE), said, silence(ASKED, RATE)]))
    assert (await answered(metrics, "complete"))["incomplete"] == 0
    # The turn ended at the answer, well before PAUSE_MS: the echo of the whole sentence is already queued.
    assert turn_reasons(caplog) == ["model"]
    reply = np.concatenate([i.samples for i in take_all(call) if isinstance(i, AudioOut)])
    assert len(reply) >= len(said)
    await push(call, silence(1.0, RATE))  # the pause goes on: no second turn
    assert turn_reasons(caplog) == ["model"] and call.stats.turns == 1
    assert metrics.registry.get_sample_value("callbridge_end_of_turn_cpu_seconds_total") > 0.01
    await call.close()


async def test_a_hesitation_the_model_calls_unfinished_stays_in_one_turn(fast_vad, metrics_and_asker, caplog):
    caplog.set_level(logging.INFO, "callbridge.call")
    metrics, asker = metrics_and_asker
    call = make_call(fast_vad, metrics, asker)
    call.start()
    before, after = split_at_longest_pause(speech(HESITATING, RATE))
    await push(call, np.concatenate([silence(0.4, RATE), before, silence(ASKED, RATE)]))
    assert (await answered(metrics, "incomplete"))["complete"] == 0
    assert call.stats.turns == 0  # the caller is still in the middle of the sentence
    await push(call, np.concatenate([after, silence(1.0, RATE)]))
    assert call.stats.turns == 1
    reply = np.concatenate([i.samples for i in take_all(call) if isinstance(i, AudioOut)])
    assert len(reply) >= len(before) + len(after)  # the whole sentence, both halves, in the one turn
    await call.close()


async def test_speaking_again_before_the_answer_makes_it_stale(fast_vad, metrics_and_asker, caplog):
    caplog.set_level(logging.INFO, "callbridge.call")
    metrics, asker = metrics_and_asker
    call = make_call(fast_vad, metrics, asker)
    call.start()
    said = speech(FINISHED, RATE)
    await push(call, np.concatenate([silence(0.4, RATE), said, silence(ASKED, RATE), said, silence(1.0, RATE)]))
    # Both pauses were asked about, and both answers came after the VAD had moved on: past the caller's next
    # words, and past the whole final pause (which the silence rule ended, as without the model).
    counts = await answered(metrics, "stale", 2)
    assert counts["complete"] == counts["incomplete"] == 0
    assert turn_reasons(caplog) == ["pause"]
    reply = np.concatenate([i.samples for i in take_all(call) if isinstance(i, AudioOut)])
    assert len(reply) >= 2 * len(said)
    await call.close()


async def test_a_call_closed_before_the_answer_ignores_it(fast_vad, metrics_and_asker):
    metrics, asker = metrics_and_asker
    call = make_call(fast_vad, metrics, asker)
    call.start()
    audio = np.concatenate([silence(0.4, RATE), speech(FINISHED, RATE), silence(ASKED, RATE)])
    for start in range(0, len(audio), FRAME):
        call.push_audio(audio[start : start + FRAME])
    await fast_vad.idle()  # the question is asked; its answer is ~50 ms away
    await call.close()
    await asyncio.sleep(0.3)  # long enough for an answer that was computed anyway
    assert call.stats.turns == 0
    assert answers(metrics)["complete"] == 0 and answers(metrics)["stale"] >= 1


class PausesSeen(EchoBot):
    """The echo bot, recording the turns shown to it at each pause and the turns it replies to."""

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.paused: list[Turn] = []
        self.replied: list[Turn] = []

    def on_pause(self, turn: Turn) -> None:
        self.paused.append(turn)

    def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        self.replied.append(turn)
        return super().reply(turn)


@pytest.mark.parametrize(("end_of_turn", "ask_every_ms"), [("silence", 0), ("model", 0), ("model", 100)])
async def test_the_bot_is_shown_each_pause_and_a_turn_ending_there_is_the_turn_it_was_shown(
        fast_vad, metrics_and_asker, end_of_turn, ask_every_ms):
    metrics, asker = metrics_and_asker
    bot = PausesSeen(CallInfo(call_id="c1", transport="test"))
    call = Call(MemoryRegistry(10).open_here("c1", "test"), bot, fast_vad, inbound_rate=RATE, outbound_rate=RATE,
                turn_config=TurnConfig(sample_rate=RATE, ask_ms=200, ask_every_ms=ask_every_ms), observer=metrics,
                end_of_turn=asker if end_of_turn == "model" else None)
    asked: list[int] = []  # every question's place in its pause, as the detector raised them
    step = call.detector.step

    def recording_step(window: np.ndarray, p: float) -> TurnEvent | None:
        event = step(window, p)
        if isinstance(event, EndOfTurnQuestion):
            asked.append(event.in_pause)
        return event

    call.detector.step = recording_step
    call.start()
    before, after = split_at_longest_pause(speech(HESITATING, RATE))
    await push(call, np.concatenate([silence(0.4, RATE), before, silence(ASKED, RATE), after, silence(0.8, RATE)]))
    await settle()
    # Shown at the comma and the hesitation (the caller then spoke on) and at the end, each time more of the
    # turn, once per pause however often the model was asked; the turn is the last one shown, at the bot's
    # rate, sample for sample (the assistant reuses the transcription it began there).
    lengths = [len(t.audio) for t in bot.paused]
    assert len(lengths) >= 2 and lengths == sorted(set(lengths)) and len(bot.replied) == 1, lengths
    assert asked.count(1) == len(lengths)
    assert (max(asked) > 1) == (ask_every_ms > 0), asked  # the final pause was asked again only when set
    assert bot.paused[-1].sample_rate == bot.replied[0].sample_rate
    assert np.array_equal(bot.paused[-1].audio, bot.replied[0].audio)
    await call.close()

