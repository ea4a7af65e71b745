"""The bot contract: what a conversational handler sees and what it may yield.

A bot never sees wire formats or sample-rate plumbing. It declares the rate it wants the caller's
audio at (`input_rate`), receives each turn as int16 numpy at that rate, and yields, as an async
generator, any of:

- `Audio` (or a FastRTC-style `(sample_rate, ndarray)` tuple): speech to play, at any rate, int16 or
  float in [-1, 1]; the runtime resamples and paces it;
- `AdditionalOutputs`: values for the client (`fetch_output`, `fetch_latest_output`, `output_stream`);
- `Message`: a client message such as a `log` or `warning`;
- `Mark`: a point in the reply; once the caller has heard everything yielded before it, the runtime
  calls `on_heard(mark.name)` (Twilio marks on the phone, frames sent on WebRTC, paced playback on the
  browser socket). After a barge-in no further marks of that reply are reported, and `on_interrupted()`
  is called: a bot learns exactly what the caller heard. Where replies resume after a backchannel
  (BACKCHANNEL_RESUME), a barge-in first only holds the reply: the runtime stops reading the generator,
  and if the caller's turn was short and `is_backchannel(turn)` says so, the reply goes on from where the
  caller stopped hearing it, its marks reported as that audio is heard, and `on_interrupted()` is not called;
- `Timings`: where a turn's time went, by stage (seconds): recorded in the `callbridge_stage_seconds`
  histogram and sent to clients as a `log` message;
- `EndCall`: hang up once everything said so far has been heard;
- `Frame`: in audio-video calls, a picture (an (H, W, 3) uint8 BGR ndarray) shown on the video track from
  when the audio yielded before it has played, until the next picture (callbridge.bots.video);
- `Transfer(to)`: once everything said so far has been heard, hand the caller on to the phone number `to`
  (the stream then ends). Only calls whose `CallInfo.can_transfer` is true can be transferred; elsewhere, or
  when the carrier refuses, the call goes on and `on_transfer_failed(to, reason)` speaks to the caller.

One bot object is made per call, so a bot may keep per-call state on `self`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray
    sample_rate: int


class AdditionalOutputs:
    """Extra values a turn produces for the client, like FastRTC's AdditionalOutputs."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __repr__(self) -> str:
        return f"AdditionalOutputs{self.args!r}"


@dataclass(frozen=True)
class Message:
    type: Literal["log", "warning", "error"]
    data: Any


@dataclass(frozen=True)
class Mark:
    """Report `on_heard(name)` once the caller has heard everything yielded before this."""

    name: str


@dataclass(frozen=True)
class Timings:
    """Seconds per stage of one turn, e.g. {"stt": 0.31, "llm_first_token": 0.2, "tts_first_audio": 0.02}."""

    stages: dict[str, float]


@dataclass(frozen=True)
class EndCall:
    """Hang up after the audio yielded before this has played to the caller."""


#: A phone number in E.164 form: "+", a country code, at most 15 digits in all.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True)
class Transfer:
    """Hand the caller on to `to` (E.164) once the audio yielded before this has played to them."""

    to: str

    def __post_init__(self) -> None:
        if not E164.fullmatch(self.to):
            raise ValueError(f"Transfer(to={self.to!r}): not an E.164 number such as +15550100")


@dataclass(frozen=True)
class Frame:
    """A picture for an audio-video call's video track: (H, W, 3) uint8, BGR as FastRTC's frames are."""

    image: np.ndarray


BotOutput = (Audio | AdditionalOutputs | Message | Mark | Timings | EndCall | Transfer | Frame
             | tuple[int, np.ndarray])


@dataclass(frozen=True)
class CallInfo:
    """What a bot may know about its call."""

    call_id: str
    transport: str
    parameters: dict[str, str] = field(default_factory=dict)
    #: "outbound" for a call this service placed (POST /calls), "inbound" for one it answered.
    direction: Literal["inbound", "outbound"] = "inbound"
    #: Twilio's answering-machine verdict for an outbound call placed with machine detection (human,
    #: machine_start, machine_end_beep, machine_end_silence, machine_end_other, fax, unknown); else "".
    answered_by: str = ""
    #: Whether a `Transfer` can hand this call on (a Twilio call with REST credentials); browsers cannot.
    can_transfer: bool = False


@dataclass(frozen=True)
class Turn:
    """One caller turn: int16 mono audio at the bot's `input_rate`, the inputs set for it, and in audio-video
    calls the camera's latest frame when the turn ended ((H, W, 3) uint8 BGR; None before any or without video)."""

    audio: np.ndarray
    sample_rate: int
    inputs: tuple[Any, ...] = ()
    frame: np.ndarray | None = None


class Bot:
    """Base class for bots. Override `reply`; `greet`, `on_dtmf`, `farewell`, `on_idle` and `idle_goodbye` say
    nothing unless overridden."""

    #: The rate the bot wants turns at; None takes the call's own (8 kHz phone, 16 kHz wideband) as is.
    input_rate: int | None = 16000
    #: True when each turn needs additional inputs: the client is asked for them (`send_input`).
    wants_inputs: bool = False
    #: The WebRTC modalities the bot handles ("audio", "video", "audio-video"): offers for others are refused.
    modalities: ClassVar[frozenset[str]] = frozenset({"audio"})

    def __init__(self, call: CallInfo) -> None:
        self.call = call

    async def greet(self) -> AsyncIterator[BotOutput]:
        return
        yield  # pragma: no cover - makes this an async generator

    def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        raise NotImplementedError

    async def on_dtmf(self, digit: str) -> AsyncIterator[BotOutput]:
        return
        yield  # pragma: no cover

    async def farewell(self) -> AsyncIterator[BotOutput]:
        """What to say when the service shuts down under a call in progress; the call ends after it."""
        return
        yield  # pragma: no cover

    async def on_idle(self, prompts: int) -> AsyncIterator[BotOutput]:
        """What to say to a caller silent for IDLE_SECONDS (`prompts`: re-prompts spoken since they last spoke).

        Only a re-prompt that yields audio counts: a bot that says nothing here never has its callers hung up
        for silence."""
        return
        yield  # pragma: no cover

    async def idle_goodbye(self) -> AsyncIterator[BotOutput]:
        """What to say to a caller still silent after IDLE_PROMPTS re-prompts; the call ends once it is heard."""
        return
        yield  # pragma: no cover

    async def on_transfer_failed(self, to: str, reason: str) -> AsyncIterator[BotOutput]:
        """A `Transfer(to)` could not happen (`reason` is a sentence fit for the caller); the call goes on, and
        what this yields is what the caller hears about it."""
        return
        yield  # pragma: no cover

    def on_heard(self, name: str) -> None:
        """The caller has heard everything yielded before `Mark(name)`."""

    def on_interrupted(self) -> None:
        """The caller spoke over the reply: it was cut off after the last mark reported heard."""

    async def is_backchannel(self, turn: Turn) -> bool:
        """A short turn the caller said over the reply (under BACKCHANNEL_MAX_MS of speech): True for a
        backchannel ("uh-huh", "okay") or a noise, so the reply resumes and the turn goes unanswered; False for
        a real interruption ("no", "wait"), which cancels the reply and is answered. Without words to go by, a
        short sound is taken for a backchannel or a noise."""
        return True

    def on_pause(self, turn: Turn) -> None:
        """The caller has paused END_OF_TURN_ASK_MS: if the turn ends here, `reply` gets a Turn with this very
        audio (equal samples). A bot may start work on it now, so that the rest of the pause overlaps that
        work (the assistant starts transcribing); if the caller speaks on, the turn it gets is longer."""
