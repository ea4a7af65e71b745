"""Transfer in the call core: a bot's Transfer(to) becomes a TransferCall for the transport once the words
before it were heard (as EndCall's hang-up does); where the call cannot be transferred, or the transport's
carrier refuses, the bot is told and what it says next plays."""

from __future__ import annotations

import numpy as np
import pytest

from callbridge.bots.base import Audio, Bot, CallInfo, Transfer
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, PlaybackMark, TransferCall
from callbridge.core.session import Session
from callbridge.core.turns import TurnConfig
from tests.unit.call_outbox import settle, take_all

RATE = 8000
DESK = "+15550100"


class HandsOn(Bot):
    """Greets with a second of words, then transfers; when told the transfer failed, says a half-second why."""

    input_rate = RATE

    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.failures: list[tuple[str, str]] = []

    async def greet(self):
        yield Audio(np.full(RATE, 1000, np.int16), RATE)
        yield Transfer(DESK)

    async def on_transfer_failed(self, to: str, reason: str):
        self.failures.append((to, reason))
        yield Audio(np.full(RATE // 2, 2000, np.int16), RATE)


def make_call(batcher, *, can_transfer: bool) -> Call:
    info = CallInfo(call_id="c1", transport="twilio" if can_transfer else "websocket", can_transfer=can_transfer)
    return Call(Session(id="c1", transport=info.transport), HandsOn(info), batcher, inbound_rate=RATE,
                outbound_rate=RATE, turn_config=TurnConfig(sample_rate=RATE), can_transfer=can_transfer)


async def test_the_transfer_waits_until_the_words_before_it_are_heard(batcher):
    call = make_call(batcher, can_transfer=True)
    call.start()
    await settle(call)
    items = take_all(call)
    assert sum(len(i.samples) for i in items if isinstance(i, AudioOut)) == RATE
    assert not [i for i in items if isinstance(i, TransferCall)], "not while the words are still playing"
    (mark,) = [i for i in items if isinstance(i, PlaybackMark)]
    call.playback_finished(mark.name)
    assert [i for i in take_all(call) if isinstance(i, TransferCall)] == [TransferCall(DESK)]
    await call.close()


async def test_a_barge_in_over_the_words_transfers_at_once(batcher):
    call = make_call(batcher, can_transfer=True)
    call.start()
    await settle(call)
    take_all(call)
    call.interrupt()
    items = take_all(call)
    assert isinstance(items[0], Flush) and TransferCall(DESK) in items
    await call.close()


async def test_where_the_call_cannot_be_transferred_the_bot_is_told_and_the_caller_hears_it(batcher):
    call = make_call(batcher, can_transfer=False)
    call.start()
    await settle(call)
    items = take_all(call)
    assert not [i for i in items if isinstance(i, TransferCall)]
    assert call.bot.failures == [(DESK, "this line cannot be transferred")]
    warnings = [i.data for i in items if isinstance(i, ClientMessage) and i.type == "warning"]
    assert warnings == ["transfer failed: this line cannot be transferred"]
    audio = np.concatenate([i.samples for i in items if isinstance(i, AudioOut)])
    # The words before the Transfer, then what the bot says about it: both play, in that order.
    assert len(audio) == RATE + RATE // 2 and audio[0] == 1000 and audio[-1] == 2000
    await call.close()


async def test_a_transfer_the_carrier_refused_goes_back_to_the_bot(batcher):
    call = make_call(batcher, can_transfer=True)
    call.start()
    await settle(call)
    call.playback_finished(next(i.name for i in take_all(call) if isinstance(i, PlaybackMark)))
    take_all(call)
    call.transfer_failed(DESK, "the phone system refused the transfer")
    await settle(call)
    assert call.bot.failures == [(DESK, "the phone system refused the transfer")]
    assert sum(len(i.samples) for i in take_all(call) if isinstance(i, AudioOut)) == RATE // 2
    await call.close()


def test_a_transfer_needs_an_e164_number():
    with pytest.raises(ValueError, match=r"not an E\.164 number"):
        Transfer("555-0100")


async def test_the_drains_goodbye_replaces_a_transfer_still_waiting_for_its_words(batcher):
    call = make_call(batcher, can_transfer=True)
    call.start()
    await settle(call)
    take_all(call)
    call.say_goodbye()  # HandsOn says nothing as a farewell: the call hangs up at once
    await settle(call)
    call.interrupt()  # a barge-in after the goodbye must not bring the stopped transfer back
    assert not [i for i in take_all(call) if isinstance(i, TransferCall)]
    await call.close()
