"""The pure parts of video calls: offer parsing, handler results, the latest-frame slot, the mirror's drawing, and
the Call's frames (Turn.frame in, Frame out), without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from callbridge.bots.base import AdditionalOutputs, Audio, BotOutput, CallInfo, Frame, Turn
from callbridge.bots.echo import EchoBot
from callbridge.bots.loader import load_bot
from callbridge.bots.mirror import MirrorBot, clock, draw_text
from callbridge.bots.video import BadVideoResult, VideoBot, split_result, video_handler
from callbridge.core.messages import AudioOut, ClientMessage, FrameOut
from callbridge.edge.video import LatestSlot
from callbridge.transports.webrtc import Offer, OfferError, parse_request
from tests.speech import silence, speech
from tests.unit.call_outbox import take_all
from tests.unit.test_call import RATE, make_call, push

OFFER = {"sdp": "v=0", "type": "offer", "webrtc_id": "v1"}
PICTURE = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)


def test_modality_comes_from_the_query_or_the_body_and_defaults_to_audio():
    assert parse_request(OFFER, None) == Offer("v1", "v=0", "send-receive", "audio")
    assert parse_request({**OFFER, "modality": "video"}, None).modality == "video"
    assert parse_request({**OFFER, "modality": "video"}, None, "audio-video").modality == "audio-video"
    offer = parse_request(OFFER, "receive", "audio-video")
    assert isinstance(offer, Offer) and offer.has_audio and offer.has_video and offer.mode == "receive"
    with pytest.raises(OfferError, match="modality must be one of audio, video, audio-video, not 'both'"):
        parse_request({**OFFER, "modality": "both"}, None)


def test_a_handlers_result_is_split_into_a_frame_and_outputs():
    outputs = AdditionalOutputs(1)
    assert split_result(PICTURE)[0] is PICTURE
    assert split_result((PICTURE, outputs)) == (PICTURE, outputs)
    assert split_result((None, outputs)) == (None, outputs)
    assert split_result(outputs) == (None, outputs)
    assert split_result(None) == (None, None)
    with pytest.raises(BadVideoResult, match="returned a str"):
        split_result("a cat")
    with pytest.raises(BadVideoResult, match=r"shape \(2, 4\) and dtype float64"):
        split_result(np.zeros((2, 4)))
    with pytest.raises(BadVideoResult, match="dtype float32"):
        split_result(np.zeros((2, 4, 3), np.float32))


def test_video_handler_makes_a_bot_class_the_loader_takes():
    def tint(frame: np.ndarray, level: int) -> np.ndarray:
        return np.full_like(frame, level)

    def plain(frame: np.ndarray, *inputs: object) -> np.ndarray:
        return frame

    def levels(level: int) -> Iterator[np.ndarray]:
        yield np.full((2, 2, 3), level, np.uint8)

    info = CallInfo("c", "webrtc")
    receiving = CallInfo("c", "webrtc", parameters={"mode": "receive"})
    bot_class = video_handler(tint)
    bot = bot_class(info)
    assert isinstance(bot, VideoBot) and bot_class.modalities == {"video"}
    assert bot.wants_inputs and not video_handler(plain)(info).wants_inputs  # a bare *inputs asks nothing
    # In receive mode the function gets no frame: its first parameter is an input already.
    assert video_handler(levels)(receiving).wants_inputs and not video_handler(levels)(info).wants_inputs
    assert (bot.transform(PICTURE, 7) == 7).all()
    assert video_handler(plain, modalities=frozenset({"video", "audio-video"})).modalities == {"video", "audio-video"}
    assert load_bot("mirror") is MirrorBot and MirrorBot.modalities == {"video", "audio-video"}
    assert issubclass(load_bot("tests.integration.webrtc_bots:Mirror"), VideoBot)
    assert EchoBot.modalities == {"audio"}


def test_the_mirror_flips_the_frame_and_draws_the_clock_in_its_corner():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 80:] = 200  # bright right half
    out = MirrorBot(CallInfo("c", "webrtc")).transform(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (out[40:, :80] == 200).all() and (out[40:, 80:] == 0).all()
    box = out[:28, :150]
    assert ((box == 0) | (box == 255)).all() and (box == 255).any()
    assert clock(3723.45) == "01:02:03.4"
    # A frame smaller than the text keeps its shape.
    assert draw_text(np.zeros((10, 10, 3), np.uint8), "12:00:00.0").shape == (10, 10, 3)


def test_the_mirror_without_a_camera_shows_a_moving_picture():
    frames = MirrorBot(CallInfo("c", "webrtc")).frames()
    first, second = next(frames), next(frames)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert not np.array_equal(first[40:], second[40:])


async def test_the_slot_keeps_only_the_newest_and_counts_the_rest():
    slot: LatestSlot[int] = LatestSlot()
    for item in range(5):
        slot.put(item)
    assert await slot.take() == 4 and slot.skipped == 4
    waiting = asyncio.ensure_future(slot.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    slot.put(5)
    assert await waiting == 5 and slot.skipped == 4


class ShowsTheTurnsFrame(EchoBot):
    """Echoes, then shows the camera frame the turn ended on, then a picture of the wrong shape."""

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        async for item in super().reply(turn):
            yield item
        assert turn.frame is not None
        yield Frame(turn.frame)
        yield Frame(np.zeros((4, 4), np.uint8))


async def test_a_turn_carries_the_latest_frame_and_a_yielded_frame_follows_the_audio(batcher):
    call = make_call(ShowsTheTurnsFrame, vad=batcher)
    call.start()
    call.push_frame(np.zeros((2, 4, 3), np.uint8))
    call.push_frame(PICTURE)  # the latest when the turn ends
    await push(call, np.concatenate([silence(0.4, RATE), speech("Hello there.", RATE), silence(1.0, RATE)]))
    items = take_all(call)
    frames = [i for i, item in enumerate(items) if isinstance(item, FrameOut)]
    assert len(frames) == 1 and items[frames[0]].image is PICTURE
    assert all(not isinstance(item, AudioOut) for item in items[frames[0]:])  # after all the reply's audio
    warnings = [i.data for i in items if isinstance(i, ClientMessage) and i.type == "warning"]
    assert warnings == ["the bot yielded a Frame of shape (4, 4) and dtype uint8: a picture is (H, W, 3) uint8"]
    await call.close()


async def test_audio_calls_have_no_frame(batcher):
    turns: list[Turn] = []

    class Records(EchoBot):
        async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
            turns.append(turn)
            yield Audio(turn.audio, turn.sample_rate)

    call = make_call(Records, vad=batcher)
    call.start()
    await push(call, np.concatenate([silence(0.4, RATE), speech("Hello there.", RATE), silence(1.0, RATE)]))
    assert len(turns) == 1 and turns[0].frame is None
    await call.close()
