"""The drain's goodbye (Call.say_goodbye): it stops the reply in progress without counting a barge-in, and a
bot that was about to hang up is still heard saying goodbye."""

from __future__ import annotations

import numpy as np

from callbridge.bots.base import Audio, Bot, CallInfo, EndCall
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, Hangup, PlaybackMark
from callbridge.core.session import Session
from callbridge.core.turns import TurnConfig
from tests.unit.call_outbox import settle, take_all

RATE = 8000


class LastWordsThenGoodbye(Bot):
    """Greets with its last words and hangs up after them; says goodbye when the service drains."""

    input_rate = RATE

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.interrupted = 0

    async def greet(self):
        yield Audio(np.full(RATE * 5, 1000, np.int16), RATE)
        yield EndCall()

    async def farewell(self):
        yield Audio(np.full(RATE // 2, 2000, np.int16), RATE)

    def on_interrupted(self) -> None:
        self.interrupted += 1


class CountingObserver:
    def __init__(self) -> None:
        self.barge_ins = 0

    def barge_in(self) -> None:
        self.barge_ins += 1

    def turn_answered(self, latency_seconds: float) -> None:
        pass

    def bot_error(self) -> None:
        pass

    def stage_timings(self, stages: dict[str, float]) -> None:
        pass


async def outbox_after_a_moment(call: Call) -> list:
    await settle()
    return take_all(call)


async def test_the_goodbye_stops_the_last_words_without_a_barge_in_and_is_heard_before_the_hang_up(batcher):
    observer = CountingObserver()
    call = Call(Session(id="c1", transport="websocket"), LastWordsThenGoodbye(CallInfo(call_id="c1", transport="test")),
                batcher, inbound_rate=RATE, outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE),
                observer=observer)
    call.start()
    await outbox_after_a_moment(call)  # the last words are queued (the transport has not played them yet)
    assert call.bot_talking
    call.say_goodbye()
    items = await outbox_after_a_moment(call)
    assert isinstance(items[0], Flush), "the last words stop at once"
    assert call.bot.interrupted == 1, "and the bot knows they were not all heard"
    assert observer.barge_ins == 0 and call.stats.barge_ins == 0
    assert not [i for i in items if isinstance(i, ClientMessage) and i.data == "barge_in"]
    assert not [i for i in items if isinstance(i, Hangup)], "no hang-up before the goodbye is heard"
    goodbye = np.concatenate([i.samples for i in items if isinstance(i, AudioOut)])
    assert len(goodbye) == RATE // 2 and set(goodbye.tolist()) == {2000}
    (mark,) = [i for i in items if isinstance(i, PlaybackMark)]
    call.playback_finished(mark.name)
    assert isinstance(call.outbox.get_nowait(), ClientMessage)  # playback_finished
    assert isinstance(call.outbox.get_nowait(), Hangup)
    await call.close()
