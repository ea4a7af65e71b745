"""Caller audio that arrives faster than real time waits for the VAD only up to INBOUND_BACKLOG_SECONDS; the rest
is refused (the media sockets then close)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from callbridge.bots.base import CallInfo
from callbridge.bots.echo import EchoBot
from callbridge.core.call import Call
from callbridge.core.messages import ClientMessage
from callbridge.core.session import Session
from callbridge.core.turns import TurnConfig
from callbridge.core.vad import VAD_WINDOW_MS, VadBatcher
from tests.speech import speech
from tests.unit.call_outbox import take_all

CAP_SECONDS = 2.0


def make_call(vad: VadBatcher, inbound_rate: int) -> Call:
    session = Session(id="flooded", transport="websocket")
    return Call(session, EchoBot(CallInfo(call_id="flooded", transport="websocket")), vad, inbound_rate=inbound_rate,
                outbound_rate=inbound_rate, turn_config=TurnConfig(sample_rate=8000),
                inbound_backlog_seconds=CAP_SECONDS)


def warnings_sent(call: Call) -> list[str]:
    return [i.data for i in take_all(call) if isinstance(i, ClientMessage) and i.type == "warning"]


@pytest.mark.parametrize("inbound_rate", [8000, 48000])  # Twilio and browser sockets; WebRTC
async def test_audio_beyond_the_cap_is_refused_counted_and_warned_once(batcher, caplog, inbound_rate):
    call = make_call(batcher, inbound_rate)
    minute = np.tile(speech("Once upon a time, in a small village by the sea.", inbound_rate), 30)[: 60 * inbound_rate]
    with caplog.at_level(logging.WARNING, logger="callbridge.call"):
        taken = [call.push_audio(minute) for _ in range(5)]  # five minutes at once, as a flooding client sends it
    assert taken == [False] * 5, "the transport is told, to close the socket"
    waiting_seconds = call._vad.waiting * VAD_WINDOW_MS / 1000
    assert CAP_SECONDS - 0.1 <= waiting_seconds <= CAP_SECONDS
    assert call.stats.inbound_dropped_seconds == pytest.approx(300 - CAP_SECONDS, abs=0.1)
    backlog = [r for r in caplog.records if getattr(r, "event", None) == "inbound_backlog"]
    assert len(backlog) == 1 and "INBOUND_BACKLOG_SECONDS" in backlog[0].getMessage()
    assert len(warnings_sent(call)) == 1, "the client is told once too"
    # Once the VAD has caught up, a second of audio is taken again, in full.
    await batcher.idle()
    dropped = call.stats.inbound_dropped_seconds
    assert call.push_audio(minute[:inbound_rate])
    assert call._vad.waiting == pytest.approx(1000 / VAD_WINDOW_MS, abs=1)
    assert call.stats.inbound_dropped_seconds == dropped
    await call.close()

