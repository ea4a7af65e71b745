"""A barge-in holds the reply (BACKCHANNEL_RESUME): a backchannel or a noise lets it resume where the caller
stopped hearing it; longer speech, or a short turn the bot says is no backchannel, cancels it. Driven with
espeak-ng speech and the real Silero model; the test plays the transport, confirming marks as if heard."""

from __future__ import annotations

import asyncio

import numpy as np

from callbridge.bots.base import Audio, Bot, CallInfo, Mark, Turn
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, PlaybackMark
from callbridge.core.playback import MAX_UNHEARD_FRAMES, Tape
from callbridge.core.turns import TurnConfig
from callbridge.sessions.registry import MemoryRegistry
from tests.speech import silence, speech
from tests.unit.call_outbox import settle, take_all

RATE = 8000
FRAME = 160
MAX_MS = 800


class CountingTalker(Bot):
    """Greets for 30 s in which 20 ms frame k is all (k + 1) * 10, so any frame tells where in the reply it
    is; a Mark every second; answers a turn with a short beep. Counts what its greeting yielded."""

    input_rate = RATE

    def __init__(self, call: CallInfo, backchannels: bool = True) -> None:
        super().__init__(call)
        self.backchannels = backchannels
        self.yielded = 0
        self.turns: list[Turn] = []
        self.asked: list[Turn] = []
        self.heard: list[str] = []
        self.interrupted = 0
        self.greeting_closed = False

    async def greet(self):
        try:
            for chunk in range(300):
                frames = np.arange(chunk * 5, chunk * 5 + 5) + 1
                self.yielded += 1
                yield Audio(np.repeat(frames * 10, FRAME).astype(np.int16), RATE)
                if chunk % 10 == 9:
                    yield Mark(f"second-{chunk // 10 + 1}")
                await asyncio.sleep(0.01)
        finally:
            self.greeting_closed = True

    async def reply(self, turn: Turn):
        self.turns.append(turn)
        yield Audio(np.full(1600, -5000, np.int16), RATE)

    async def is_backchannel(self, turn: Turn) -> bool:
        self.asked.append(turn)
        return self.backchannels

    def on_heard(self, name: str) -> None:
        self.heard.append(name)

    def on_interrupted(self) -> None:
        self.interrupted += 1


def make_call(batcher, backchannels: bool = True) -> Call:
    session = MemoryRegistry(10).open_here("c1", "test")
    bot = CountingTalker(CallInfo(call_id="c1", transport="test"), backchannels)
    return Call(session, bot, batcher, inbound_rate=RATE, outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE),
                backchannel_resume=True, backchannel_max_ms=MAX_MS)


def logs(items: list) -> list:
    return [i.data for i in items if isinstance(i, ClientMessage) and i.type == "log"]


def frame_numbers(items: list) -> list[int]:
    """Which greeting frame (1-based) each AudioOut is."""
    return [int(i.samples[0]) // 10 for i in items if isinstance(i, AudioOut)]


def marks_after_frames(items: list) -> list[tuple[int, str]]:
    """Each PlaybackMark with the greeting frame it follows."""
    marks, last = [], 0
    for item in items:
        if isinstance(item, AudioOut):
            last = int(item.samples[0]) // 10
        elif isinstance(item, PlaybackMark):
            marks.append((last, item.name))
    return marks


async def greeting_under_way(call: Call) -> list:
    call.start()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if call.bot.yielded >= 30:  # 3 s of it queued
            break
    return take_all(call)


async def speak_over(call: Call, audio: np.ndarray) -> list[tuple[int, list, int]]:
    """The caller's audio one VAD window at a time: (samples pushed so far, outbox items that came, greeting
    chunks the bot had yielded by then)."""
    window = call.detector.config.window_samples
    steps = []
    for start in range(0, len(audio), window):
        call.push_audio(audio[start : start + window])
        await call._vad.batcher.idle()
        await asyncio.sleep(0.005)
        steps.append((start + window, take_all(call), call.bot.yielded))
    await settle(call)
    steps.append((len(audio), take_all(call), call.bot.yielded))
    return steps


def first_step(steps: list[tuple[int, list, int]], what) -> int:
    return next(pushed for pushed, items, _ in steps if any(what(item) for item in items))


def everything(steps: list[tuple[int, list, int]]) -> list:
    return [item for _, items, _ in steps for item in items]


def is_log(name: str):
    return lambda item: isinstance(item, ClientMessage) and item.type == "log" and item.data == name


async def test_a_backchannel_holds_the_reply_and_it_resumes_where_the_caller_stopped_hearing(batcher):
    call = make_call(batcher)
    before = await greeting_under_way(call)
    marks = marks_after_frames(before)
    # The caller has heard the first 1.2 s: the transport confirmed the marks up to there.
    for frame, name in marks:
        if frame <= 60:
            call.playback_finished(name)
    assert call.bot.heard == ["second-1"]
    assert [frame for frame, _ in marks][:4] == [25, 50, 75, 100], "a resume point every 0.5 s between bot marks"

    steps = await speak_over(call, np.concatenate([speech("Uh-huh.", RATE), silence(1.2, RATE)]))
    flushed = first_step(steps, lambda item: isinstance(item, Flush))
    assert flushed == first_step(steps, is_log("started_talking")), "the audio stops in the window speech starts"
    after = everything(steps)
    assert [i for i in after if isinstance(i, Flush)] == [Flush()]
    assert logs(after)[:3] == ["started_talking", "barge_in", "pause_detected"]
    resumed = after.index(next(i for i in after if is_log("reply_resumed")(i)))
    resumed_at = first_step(steps, is_log("reply_resumed"))
    held = [yielded for pushed, _, yielded in steps if flushed <= pushed < resumed_at]
    # At most the item the generator was already making when the caller spoke comes out during the hold (under
    # load it can finish a step after the flush); nothing more is read from it.
    assert len(held) > 20 and held[-1] - held[0] <= 1, "the held reply's generator was not read"
    assert "reply_cancelled" not in logs(after) and "response_starting" not in logs(after)
    assert len(call.bot.asked) == 1 and call.bot.turns == [], "the backchannel was asked about, not answered"
    assert call.stats.barge_ins == 1 and call.stats.replies_resumed == 1 and call.bot.interrupted == 0

    # The reply resumes at the last point heard (frame 50 was confirmed: frame 51 comes next) and goes on.
    await asyncio.sleep(0.1)
    replayed = after[resumed:] + take_all(call)
    numbers = frame_numbers(replayed)
    assert numbers[0] == 51 and numbers == list(range(51, 51 + len(numbers)))
    assert numbers[-1] > max(frame_numbers(before)), "and on past what was queued before the hold"
    # Marks queued before the hold are not reports of audio heard (Twilio echoes them on clear); the
    # replayed ones are, once confirmed.
    for _, name in marks:
        call.playback_finished(name)
    assert call.bot.heard == ["second-1"]
    name = next(name for frame, name in marks_after_frames(replayed) if frame == 100)
    call.playback_finished(name)
    assert call.bot.heard == ["second-1", "second-2"]
    await call.close()


async def test_speech_longer_than_the_bound_cancels_the_reply_before_the_turn_ends(batcher):
    call = make_call(batcher)
    await greeting_under_way(call)
    said = speech("Tell me more about the weather.", RATE)
    steps = await speak_over(call, np.concatenate([said, silence(1.0, RATE)]))
    cancelled = first_step(steps, is_log("reply_cancelled"))
    # Speech starts at the file's first sample; the reply is cancelled once it has gone on for MAX_MS (the VAD
    # may end speech a window or two after the sound, and see it start a window late).
    assert MAX_MS / 1000 <= cancelled / RATE <= MAX_MS / 1000 + 0.2, cancelled / RATE
    assert cancelled < first_step(steps, is_log("pause_detected")), "without waiting for the turn's end"
    items = everything(steps)
    assert len([i for i in items if isinstance(i, Flush)]) == 1, "one clear, when speech started"
    assert call.bot.greeting_closed and call.bot.interrupted == 1
    assert call.bot.asked == [] and len(call.bot.turns) == 1, "a real interruption is answered, as ever"
    assert "reply_resumed" not in logs(items)
    await call.close()


async def test_a_short_turn_the_bot_says_is_no_backchannel_cancels_the_reply_and_is_answered(batcher):
    call = make_call(batcher, backchannels=False)
    await greeting_under_way(call)
    steps = await speak_over(call, np.concatenate([speech("No.", RATE), silence(1.0, RATE)]))
    items = everything(steps)
    assert first_step(steps, is_log("pause_detected")) <= first_step(steps, is_log("reply_cancelled"))
    assert len(call.bot.asked) == 1 and call.bot.asked[0].sample_rate == RATE
    assert call.bot.greeting_closed and call.bot.interrupted == 1
    assert len(call.bot.turns) == 1
    assert "response_starting" in logs(items) and "reply_resumed" not in logs(items)
    await call.close()


class Pondering(CountingTalker):
    """Never makes up its mind about a backchannel."""

    async def is_backchannel(self, turn: Turn) -> bool:
        await asyncio.Event().wait()
        return True


async def test_closing_a_call_whose_reply_is_held_stops_the_verdict_too(batcher):
    session = MemoryRegistry(10).open_here("c1", "test")
    call = Call(session, Pondering(CallInfo(call_id="c1", transport="test")), batcher, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE), backchannel_resume=True)
    await greeting_under_way(call)
    await speak_over(call, np.concatenate([speech("Okay.", RATE), silence(1.0, RATE)]))
    verdict = call._hold.verdict if call._hold is not None else None
    assert verdict is not None and not verdict.done(), "the bot is still deciding"
    await call.close()
    assert verdict.cancelled() and call.bot.greeting_closed


class Lecturer(CountingTalker):
    """A greeting of 70 s made at once: more than the tape keeps unheard (MAX_UNHEARD_FRAMES) runs ahead."""

    async def greet(self):
        for chunk in range(700):
            self.yielded += 1
            yield Audio(np.repeat(np.arange(chunk * 5, chunk * 5 + 5) * 10 + 10, FRAME).astype(np.int16), RATE)
            if chunk % 100 == 99:
                await asyncio.sleep(0)


def test_a_tape_that_dropped_unheard_audio_cannot_resume_until_the_caller_hears_past_the_gap() -> None:
    tape = Tape(lambda item: None, resumable=True)
    names = []
    tape._mark = lambda checkpoint, first: names.append(checkpoint)  # the checkpoints, in order
    for k in range(MAX_UNHEARD_FRAMES + 200):
        tape.play(AudioOut(np.full(FRAME, k, np.int16)), "r1")
    assert not tape.can_resume, "a replay would start past audio the caller never heard"
    tape._on_wire = {str(n): checkpoint for n, checkpoint in enumerate(names)}
    assert tape.heard("0") is names[0] and not tape.can_resume, "the first point heard was dropped too"
    assert tape.heard(str(len(names) - 1)) is names[-1] and tape.can_resume, "from a point kept on, all is kept"


async def test_a_reply_further_ahead_than_the_tape_keeps_is_cancelled_by_a_backchannel_not_skipped(batcher):
    session = MemoryRegistry(10).open_here("c1", "test")
    call = Call(session, Lecturer(CallInfo(call_id="c1", transport="test")), batcher, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE), backchannel_resume=True)
    call.start()
    for _ in range(500):
        await asyncio.sleep(0.01)
        if call.bot.yielded == 700:
            break
    take_all(call)
    steps = await speak_over(call, np.concatenate([speech("Uh-huh.", RATE), silence(1.2, RATE)]))
    said = logs(everything(steps))
    assert "barge_in" in said and "reply_resumed" not in said, said
    assert call.bot.asked == [] and call.bot.interrupted == 1 and len(call.bot.turns) == 1, "cancelled, as ever"
    await call.close()
