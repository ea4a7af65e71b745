"""The call runtime: inbound audio and control events in, outbound audio and messages out.

A transport feeds a Call PCM frames (`push_audio`), DTMF digits and playback confirmations, and
drains `next_outbound()`. The Call detects turns (callbridge.core.turns), runs the bot one reply at a time, and
stops a reply the moment the caller starts speaking over it (barge-in): cancelled, or held until the caller's
speech proves a backchannel, then resumed where they stopped hearing it (callbridge.core.playback). It owns no
sockets and reads time only through the injected clock, so tests drive it with synthetic audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from callbridge.bots.base import (
    AdditionalOutputs,
    Audio,
    Bot,
    BotOutput,
    EndCall,
    Frame,
    Mark,
    Message,
    Timings,
    Transfer,
    Turn,
)
from callbridge.codec import FRAME_MS, Rechunker, Resampler, resample
from callbridge.core.end_of_turn import EndOfTurnAsker
from callbridge.core.gate import TurnGate
from callbridge.core.messages import (
    AudioOut,
    ClientMessage,
    Flush,
    FrameOut,
    Hangup,
    Outbound,
    PlaybackMark,
    TransferCall,
    log,
)
from callbridge.core.playback import Checkpoint, Tape
from callbridge.core.session import Session
from callbridge.core.turns import EndOfTurnQuestion, SpeechStarted, TurnConfig, TurnDetector, TurnEnded
from callbridge.core.vad import VAD_WINDOW_MS, VadBatcher

logger = logging.getLogger("callbridge.call")

def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Outbox:
    """The queue a transport drains. Audio can be dropped from it on barge-in; messages never are."""

    def __init__(self) -> None:
        self._items: deque[Outbound] = deque()
        self._ready = asyncio.Event()
        self.drops = 0  # how many times queued audio was dropped (barge-ins, the goodbye)
        self._pause: asyncio.Future[None] | None = None

    def put(self, item: Outbound) -> None:
        self._items.append(item)
        self._ready.set()

    def drop_audio(self) -> int:
        kept = [item for item in self._items if not isinstance(item, AudioOut | PlaybackMark)]
        dropped = len(self._items) - len(kept)
        self._items = deque(kept)
        self.drops += 1
        if self._pause is not None and not self._pause.done():
            self._pause.set_result(None)
        return dropped

    async def pause_until(self, when: float) -> bool:
        """Wait until loop time `when`, or less if queued audio is dropped meanwhile: True if it was.

        A transport paces audio with this, so that a barge-in's Flush goes out at once instead of after
        the audio message it was waiting to send (up to a whole message later). A counter rather than the
        future's result: a drop may come after the timer resolved the future but before the caller resumes."""
        drops = self.drops
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        timer = loop.call_at(when, _resolve, pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pause = None
        return self.drops != drops

    async def wait(self, until: float) -> None:
        """Until an item is queued or loop time `until`, whichever comes first (a transport idle between replies)."""
        if self._items:
            return
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                await self._ready.wait()

    def peek(self) -> Outbound | None:
        return self._items[0] if self._items else None

    def get_nowait(self) -> Outbound | None:
        if not self._items:
            self._ready.clear()
            return None
        return self._items.popleft()

    async def get(self) -> Outbound:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class CallStats:
    turns: int = 0
    barge_ins: int = 0
    replies_resumed: int = 0  # barge-ins that were backchannels or noises: the held reply went on
    inbound_dropped_seconds: float = 0.0  # caller audio beyond the backlog cap (Call.push_audio)


class CallObserver(Protocol):
    """Where a Call reports what metrics count (callbridge.metrics.Metrics implements it)."""

    def barge_in(self) -> None: ...
    def turn_answered(self, latency_seconds: float) -> None: ...
    def bot_error(self) -> None: ...
    def stage_timings(self, stages: dict[str, float]) -> None: ...
    def end_of_turn_answered(self, answer: str) -> None: ...


class _Unobserved:
    def barge_in(self) -> None:
        pass

    def turn_answered(self, latency_seconds: float) -> None:
        pass

    def bot_error(self) -> None:
        pass

    def stage_timings(self, stages: dict[str, float]) -> None:
        pass

    def end_of_turn_answered(self, answer: str) -> None:
        pass


@dataclass(frozen=True)
class _Job:
    kind: str  # "greet" | "turn" | "dtmf" | "farewell" | "idle" | "idle_goodbye" | "transfer_failed"
    payload: Any = None
    speech_end_at: float = 0.0  # clock time the turn's last speech sample arrived
    frame: np.ndarray | None = None  # the camera's latest frame when the turn ended (audio-video calls)


@dataclass
class _Hold:
    """A reply held at a barge-in, until the caller's speech shows a backchannel (resume) or not (cancel)."""

    onset: int  # first sample of the caller's speech in progress (the detector's count)
    turns: deque[_Job]  # the caller's turns since, waiting for the bot's verdict
    verdict: asyncio.Task[None] | None = None


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Bot audio of any common layout (mono, (1, n), (n, 2), float or int16) to mono int16."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        channel_axis = 0 if samples.shape[0] <= samples.shape[1] else 1
        if samples.shape[channel_axis] > 1:
            samples = samples.mean(axis=channel_axis).astype(samples.dtype)  # keep int16 as int16
        else:
            samples = samples.reshape(-1)
    if samples.dtype == np.int16:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return np.clip(samples, -32768, 32767).astype(np.int16)


class Call:
    def __init__(
        self,
        session: Session,
        bot: Bot,
        vad: VadBatcher,
        *,
        inbound_rate: int,
        outbound_rate: int,
        turn_config: TurnConfig,
        barge_in: bool = True,
        backchannel_resume: bool = False,
        backchannel_max_ms: int = 800,
        input_timeout: float = 0.5,
        inputs_possible: bool = True,
        inbound_backlog_seconds: float = 10.0,
        idle_seconds: float = 0.0,
        idle_prompts: int = 2,
        can_transfer: bool = False,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
        end_of_turn: EndOfTurnAsker | None = None,
        turn_gate: TurnGate | None = None,
    ) -> None:
        self.session = session
        self.bot = bot
        self.inbound_rate = inbound_rate
        self.outbound_rate = outbound_rate
        self.vad_rate = 8000 if inbound_rate == 8000 else 16000
        self.barge_in = barge_in
        # A barge-in holds the reply (BACKCHANNEL_RESUME): speech longer than this cancels it, shorter is asked of
        # the bot (is_backchannel). Off: the reply is cancelled at once.
        self.backchannel_resume = backchannel_resume
        self._backchannel_max_samples = backchannel_max_ms * self.vad_rate // 1000
        self.input_timeout = input_timeout
        # A phone caller can never send `set_input`: a bot that wants inputs gets none there, at once.
        self.inputs_possible = inputs_possible
        self.can_transfer = can_transfer  # the transport can act on TransferCall (Twilio with REST credentials)
        self.clock = clock
        self.observer = observer or _Unobserved()
        self.turn_gate = turn_gate  # STOP_WORDS: turns without a stop word are not answered (_admitted)
        # Only a bot that overrides on_pause is shown pauses (the turn's audio is resampled for it each time), and
        # pauses are asked about only for a model to answer or such a bot: else each would copy the turn for nobody.
        self._bot_previews = type(bot).on_pause is not Bot.on_pause
        # A pause is asked about again only for the model: the bot is shown its first question's turn alone.
        ask_ms = turn_config.ask_ms if end_of_turn is not None or self._bot_previews else None
        ask_every_ms = turn_config.ask_every_ms if end_of_turn is not None else 0
        self.detector = TurnDetector(replace(turn_config.at(self.vad_rate), ask_ms=ask_ms, ask_every_ms=ask_every_ms))
        self._windows = Rechunker(self.vad_rate, VAD_WINDOW_MS)
        self._vad = vad.stream(self.vad_rate, self._on_window)
        self._inbound_resampler = Resampler(inbound_rate, self.vad_rate) if inbound_rate != self.vad_rate else None
        self.inbound_backlog_seconds = inbound_backlog_seconds
        # In samples, computed once: the check runs on every inbound message (bench/results/history.md).
        self._window_samples = self._windows.frame_samples
        self._max_backlog_samples = max(1, round(inbound_backlog_seconds * 1000 / VAD_WINDOW_MS)) * self._window_samples
        self.outbox = Outbox()
        self.stats = CallStats()
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._reply: asyncio.Task[None] | None = None
        self._reply_ids = itertools.count(1)
        self._unheard: set[str] = set()
        self._hangup_after: str | None = None
        self._tape = Tape(self.outbox.put, resumable=backchannel_resume)
        self._hold: _Hold | None = None
        self._playing = asyncio.Event()  # cleared while a reply is held: its generator is not read meanwhile
        self._playing.set()
        self._transfer_after: tuple[str, str] | None = None  # (reply id, number): transfer once that reply is heard
        self._told: set[str] = set()  # bot mistakes already logged for this call (once each)
        self._talking = False  # the current reply has queued audio and is still producing
        self.closed = False
        # Idle callers (_count_idle): counted in samples of caller audio, so the same audio gives the same prompts.
        self._idle_limit = round(idle_seconds * self.vad_rate)  # 0: idle callers are left alone
        self.idle_prompts = idle_prompts
        self._idle_samples = 0  # caller audio in a row while nobody spoke and nothing was being said
        self._reprompts = 0  # re-prompts spoken since the caller last spoke
        self._end_of_turn = end_of_turn  # asks the turn's questions (END_OF_TURN=model), or None
        self._question: tuple[EndOfTurnQuestion, asyncio.Task[None]] | None = None
        self._latest_frame: np.ndarray | None = None  # audio-video calls: the camera, for Turn.frame

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def bot_talking(self) -> bool:
        """The bot's audio is being produced, or has not yet been heard by the caller."""
        return self._talking or bool(self._unheard)

    # -- inputs from the transport -------------------------------------------------------------------

    def start(self) -> None:
        """Start the bot worker and let the bot greet the caller."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"call-{self.id}")
            self._jobs.put_nowait(_Job("greet"))

    def push_audio(self, pcm: np.ndarray) -> bool:
        """Caller audio: int16 mono at `inbound_rate`, any length. False: some of it was dropped at the cap.

        Every transport's caller audio waits here for the VAD, which keeps up with about twice real time
        per call. At most `inbound_backlog_seconds` of it waits: audio beyond that is cut before it is framed
        into windows (no copy, no memory held), counted, and warned of once per call; that bounds a call's
        memory whatever the transport. A caller on a real line never sends faster than real time for long
        and a network burst of a few seconds stays under the cap, so only a client flooding audio (or a
        call already that far behind, lost anyway) reaches it; the media sockets then close the socket
        (1008), because a flooder left connected keeps costing a core in decoding what is dropped."""
        if self.closed:
            return True
        if self._inbound_resampler is not None:
            pcm = self._inbound_resampler.process(pcm)
        room = self._max_backlog_samples - len(self._vad.pending) * self._window_samples - self._windows.pending
        taken = len(pcm) <= room
        if not taken:
            kept = max(room, 0)
            self._drop_inbound(len(pcm) - kept)
            pcm = pcm[:kept]
        for window in self._windows.push(pcm):
            self._vad.submit(window)
        return taken

    def _drop_inbound(self, samples: int) -> None:
        """Count caller audio dropped at the backlog cap; the first time, warn the log and the client."""
        if not self.stats.inbound_dropped_seconds:
            message = (f"caller audio arrives faster than real time: more than {self.inbound_backlog_seconds:g} s of "
                       "it waits to be heard (INBOUND_BACKLOG_SECONDS), and audio beyond that is dropped")
            logger.warning("call %s: %s", self.id, message, extra={"event": "inbound_backlog", "call_id": self.id})
            self.send(ClientMessage("warning", message))
        self.stats.inbound_dropped_seconds += samples / self.vad_rate

    def _on_window(self, window: np.ndarray, probability: float) -> None:
        """A VAD result, in order: advance the turn state machine."""
        event = self.detector.step(window, probability)
        if isinstance(event, SpeechStarted):
            self._on_speech_started(event)
        elif isinstance(event, TurnEnded):
            self._on_turn_ended(event)
        elif isinstance(event, EndOfTurnQuestion):
            self._ask(event)
        elif self._hold is not None and self.detector.speaking:
            self._cancel_if_long(self.detector.speech_end)
        self._drop_stale_question()
        self._count_idle(len(window))

    def publish(self, outputs: AdditionalOutputs) -> None:
        """The bot's additional outputs: kept for `fetch_latest_output`/`output_stream`, and `fetch_output` told."""
        self.session.publish_output(outputs.args)
        self.send(ClientMessage("fetch_output", list(outputs.args)))

    def push_frame(self, frame: np.ndarray) -> None:
        """The caller's camera ((H, W, 3) uint8): the latest frame goes with the next turn to end (Turn.frame)."""
        self._latest_frame = frame

    def push_dtmf(self, digit: str) -> None:
        self._reprompts = 0
        self._jobs.put_nowait(_Job("dtmf", digit))

    def say_goodbye(self) -> None:
        """The service is draining: stop what the bot is saying, let it say goodbye, then hang up.

        Stopping the reply here is not a barge-in (nobody spoke over the bot): it is not counted, logged or
        told to clients as one. A hang-up that waited for the stopped reply now waits for the goodbye."""
        if self.bot_talking:
            self._stop_reply()
            logger.info("call %s: reply stopped for the goodbye", self.id,
                        extra={"event": "goodbye_stops_reply", "call_id": self.id})
        self._hangup_after = None
        self._transfer_after = None  # its words were stopped unheard: the goodbye and hang-up take its place
        while not self._jobs.empty():
            self._jobs.get_nowait()
        self._jobs.put_nowait(_Job("farewell"))

    def playback_finished(self, reply_id: str) -> None:
        """The transport reports that the audio before playback mark `reply_id` has been heard (or cleared)."""
        checkpoint = self._tape.heard(reply_id)
        if checkpoint is None or checkpoint.kind == "resume_point":
            return
        if checkpoint.kind == "bot_mark":
            self._call_bot_hook("on_heard", checkpoint.label)
            return
        reply_id = checkpoint.reply_id
        if reply_id not in self._unheard:
            return
        self._unheard.discard(reply_id)
        self.send(log("playback_finished"))
        if self._hangup_after == reply_id:
            self.outbox.put(Hangup())
        if self._transfer_after is not None and self._transfer_after[0] == reply_id:
            self._request_transfer()

    async def next_outbound(self) -> Outbound:
        return await self.outbox.get()

    def send(self, message: ClientMessage) -> None:
        self.outbox.put(message)

    async def close(self) -> None:
        """End the call: cancel the bot (its generator is closed) and stop the worker."""
        self.closed = True
        self._vad.close()
        tasks = (self._reply, self._worker, self._question[1] if self._question else None,
                 self._hold.verdict if self._hold is not None else None)
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
        for task in tasks:
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    # -- turn events -------------------------------------------------------------------------------

    def _on_speech_started(self, event: SpeechStarted) -> None:
        self._reprompts = 0
        self.send(log("started_talking"))
        if self._hold is not None:
            self._hold.onset = event.onset  # the caller speaks again while the reply is held
        elif self.barge_in and self.bot_talking:
            # A reply the call hangs up or transfers after is not held: talking over its last words hangs up or
            # transfers now, as ever. Nor is one that ran further ahead of the caller than the tape keeps: it could
            # only resume past audio they never heard.
            if (self.backchannel_resume and self._hangup_after is None and self._transfer_after is None
                    and self._tape.can_resume):
                self._hold_reply(event.onset)
            else:
                self.interrupt()

    def _on_turn_ended(self, event: TurnEnded) -> None:
        self.stats.turns += 1
        self.send(log("pause_detected"))
        speech_end_at = self.clock() - (event.at - event.speech_end) / self.vad_rate
        logger.info("call %s: turn of %.2f s (%s)", self.id, len(event.audio) / self.vad_rate, event.reason,
                    extra={"event": "turn", "call_id": self.id, "seconds": round(len(event.audio) / self.vad_rate, 3),
                           "reason": event.reason})
        job = _Job("turn", event, speech_end_at, self._latest_frame)
        if self._hold is None:
            self._jobs.put_nowait(job)
        elif not self._cancel_if_long(event.speech_end, job):
            self._hold.turns.append(job)
            if self._hold.verdict is None:
                self._hold.verdict = asyncio.create_task(self._judge_held_turns(self._hold))

    def _ask(self, question: EndOfTurnQuestion) -> None:
        """The caller has paused ASK_MS: show the bot the turn it gets if the turn ends here (`on_pause`), and
        have the end-of-turn model (END_OF_TURN=model) judge it, off the event loop. The pause's later questions
        (END_OF_TURN_ASK_EVERY_MS) go to the model alone: the turn the bot would get has not changed."""
        if self._bot_previews and question.in_pause == 1:
            heard = question.audio[: len(question.audio) - (question.at - question.speech_end)]
            self._call_bot_hook("on_pause", self._bot_turn(heard))
        if self._end_of_turn is not None:
            self._question = (question, asyncio.create_task(self._answer(self._end_of_turn, question)))

    async def _answer(self, asker: EndOfTurnAsker, question: EndOfTurnQuestion) -> None:
        try:
            probability = await asker.probability(question.audio.astype(np.float32) / 32768, self.vad_rate)
        except asyncio.CancelledError:
            self.observer.end_of_turn_answered("stale")
            raise
        except Exception:  # a broken model must not end the call: the pause still ends the turn
            logger.exception("call %s: the end-of-turn model failed", self.id)
            return
        if self.closed or not self.detector.is_open(question):
            self.observer.end_of_turn_answered("stale")
            return
        complete = probability >= self.detector.config.model_threshold
        self.observer.end_of_turn_answered("complete" if complete else "incomplete")
        logger.debug("call %s: end of turn %.2f", self.id, probability)
        if (event := self.detector.answer(question, probability)) is not None:
            self._on_turn_ended(event)

    def _drop_stale_question(self) -> None:
        """The caller spoke again or the pause ended the turn: a question still waiting for the model is
        withdrawn (never computed if its turn on the model's thread has not come)."""
        if self._question is not None and not self.detector.is_open(self._question[0]):
            if not self._question[1].done():
                self._question[1].cancel()
            self._question = None

    def interrupt(self) -> None:
        """Barge-in: the caller spoke over the reply. It stops, and a hang-up that waited for it happens now."""
        self.stats.barge_ins += 1
        self.observer.barge_in()
        self._stop_reply()
        self.send(log("barge_in"))
        if self._hangup_after is not None:
            self.outbox.put(Hangup())
        if self._transfer_after is not None:
            self._request_transfer()
        logger.info("call %s: barge-in", self.id, extra={"event": "barge_in", "call_id": self.id})

    def _stop_reply(self) -> None:
        """Cancel the reply, drop its queued audio, tell the transport to flush playback and the bot that the
        rest was not heard."""
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        if not self._tape.held:  # a held reply's audio was flushed when it was held
            self.outbox.drop_audio()
            self.outbox.put(Flush())
        self._end_hold()
        self._tape.clear()  # marks echoed after the clear were not heard
        self._unheard.clear()
        self._call_bot_hook("on_interrupted")

    # -- a reply held at a barge-in --------------------------------------------------------------------

    def _hold_reply(self, onset: int) -> None:
        """Barge-in with BACKCHANNEL_RESUME: the audio stops at once (Flush) but the reply is only held: what
        the caller had not heard is kept and its generator is not read until the caller's speech is judged."""
        self.stats.barge_ins += 1
        self.observer.barge_in()
        self._tape.hold()
        self.outbox.drop_audio()
        self.outbox.put(Flush())
        self._playing.clear()
        self._hold = _Hold(onset, deque())
        self.send(log("barge_in"))
        logger.info("call %s: barge-in: reply held", self.id, extra={"event": "barge_in", "call_id": self.id,
                                                                      "reply": "held"})

    def _cancel_if_long(self, speech_end: int, job: _Job | None = None) -> bool:
        """Speech over the held reply longer than BACKCHANNEL_MAX_MS is a real interruption: the reply is
        cancelled now, and the turns held meanwhile (with `job`, the one just ended) are answered."""
        assert self._hold is not None
        speech = speech_end - self._hold.onset
        if speech <= self._backchannel_max_samples:
            return False
        self._cancel_held(f"{1000 * speech / self.vad_rate:.0f} ms of speech, over BACKCHANNEL_MAX_MS",
                          [job] if job else [])
        return True

    def _cancel_held(self, why: str, more: list[_Job]) -> None:
        assert self._hold is not None
        turns = [*self._hold.turns, *more]
        self._stop_reply()
        for job in turns:
            self._jobs.put_nowait(job)
        self.send(log("reply_cancelled"))
        logger.info("call %s: barge-in: reply cancelled (%s)", self.id, why,
                    extra={"event": "barge_in_outcome", "call_id": self.id, "reply": "cancelled", "why": why})

    def _end_hold(self) -> None:
        """No reply is held any more (it resumes, or is stopped): stop judging the caller's turns."""
        hold, self._hold = self._hold, None
        self._playing.set()
        if hold is not None and hold.verdict is not None and hold.verdict is not asyncio.current_task():
            hold.verdict.cancel()

    async def _judge_held_turns(self, hold: _Hold) -> None:
        """Ask the bot about each short turn said over the held reply, in order: the first that is not a
        backchannel cancels the reply and is answered; if all are, and the caller is quiet, the reply resumes."""
        while hold.turns:
            job = hold.turns[0]
            if not await self._ask_is_backchannel(job.payload):
                self._cancel_held("not a backchannel", [])
                return
            hold.turns.popleft()
            logger.info("call %s: backchannel or noise (%.2f s), not answered", self.id,
                        len(job.payload.audio) / self.vad_rate,
                        extra={"event": "backchannel", "call_id": self.id})
        hold.verdict = None
        if not self.detector.speaking:
            self._end_hold()
            self.stats.replies_resumed += 1
            self.send(log("reply_resumed"))
            self._tape.replay()
            logger.info("call %s: barge-in: reply resumed", self.id,
                        extra={"event": "barge_in_outcome", "call_id": self.id, "reply": "resumed"})

    async def _ask_is_backchannel(self, event: TurnEnded) -> bool:
        """The bot's verdict on a short turn; a bot that raises gets the turn answered, as without the hook."""
        try:
            return bool(await self.bot.is_backchannel(self._bot_turn(event.audio)))
        except Exception as exc:
            self.observer.bot_error()
            self._bot_mistake("hook:is_backchannel", f"the bot's is_backchannel raised: {exc!r}", exc_info=True)
            return False

    # -- idle callers --------------------------------------------------------------------------------

    def _count_idle(self, samples: int) -> None:
        """One window of caller audio: idle while the caller is not speaking and the bot is neither producing
        nor being heard. IDLE_SECONDS of it in a row asks the bot to re-prompt; once IDLE_PROMPTS re-prompts
        went unanswered, the bot says its idle goodbye and the call ends when that has been heard."""
        if not self._idle_limit:
            return
        replying = (self._reply is not None and not self._reply.done()) or not self._jobs.empty()
        if replying or self.detector.speaking or self.bot_talking:
            self._idle_samples = 0
            return
        self._idle_samples += samples
        if self._idle_samples < self._idle_limit:
            return
        self._idle_samples = 0
        if self._reprompts < self.idle_prompts:
            self._jobs.put_nowait(_Job("idle", self._reprompts))
            return
        logger.info("call %s: hanging up an idle caller after %d re-prompts", self.id, self._reprompts,
                    extra={"event": "idle_hangup", "call_id": self.id, "reprompts": self._reprompts})
        self._jobs.put_nowait(_Job("idle_goodbye"))

    def _reprompted(self) -> None:
        """The bot's re-prompt has started to play: it counts toward IDLE_PROMPTS."""
        self._reprompts += 1
        logger.info("call %s: idle caller re-prompted (%d of %d)", self.id, self._reprompts, self.idle_prompts,
                    extra={"event": "idle_reprompt", "call_id": self.id, "reprompts": self._reprompts})

    # -- the bot -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            job = await self._jobs.get()
            self._reply = asyncio.create_task(self._speak(job))
            try:
                await asyncio.wait([self._reply])
            finally:
                if not self._reply.done():
                    self._reply.cancel()

    def _outputs(self, job: _Job, inputs: tuple[Any, ...]) -> AsyncIterator[BotOutput]:
        if job.kind == "greet":
            return self.bot.greet()
        if job.kind == "dtmf":
            return self.bot.on_dtmf(job.payload)
        if job.kind == "farewell":
            return self.bot.farewell()
        if job.kind == "idle":
            return self.bot.on_idle(job.payload)
        if job.kind == "idle_goodbye":
            return self.bot.idle_goodbye()
        if job.kind == "transfer_failed":
            return self.bot.on_transfer_failed(*job.payload)
        return self.bot.reply(self._bot_turn(job.payload.audio, inputs, job.frame))

    def _bot_turn(self, audio: np.ndarray, inputs: tuple[Any, ...] = (), frame: np.ndarray | None = None) -> Turn:
        """A turn's audio at the VAD's rate as the bot wants it."""
        rate = self.bot.input_rate or self.vad_rate
        if rate != self.vad_rate:
            audio = resample(audio, self.vad_rate, rate)
        return Turn(audio=audio, sample_rate=rate, inputs=inputs, frame=frame)

    async def _speak(self, job: _Job) -> None:
        gate = self.turn_gate if job.kind == "turn" else None
        if gate is not None and not await self._admitted(gate, job.payload.audio):
            return
        inputs: tuple[Any, ...] = ()
        if job.kind == "turn" and self.bot.wants_inputs:
            inputs = await self._take_inputs()
        reply_id = f"reply-{next(self._reply_ids)}"
        chunker = Rechunker(self.outbound_rate, FRAME_MS)
        resamplers: dict[int, Resampler] = {}
        started = False
        end_call = job.kind in ("farewell", "idle_goodbye")
        transfer_to: str | None = None
        outputs = self._outputs(job, inputs)
        try:
            async for item in outputs:
                await self._playing.wait()  # a held reply's generator is not read further
                if isinstance(item, tuple):
                    item = Audio(samples=item[1], sample_rate=item[0])
                if isinstance(item, Audio):
                    if not started:
                        started = self._talking = True
                        self.send(log("response_starting"))
                        if job.kind == "idle":
                            self._reprompted()
                        if job.kind == "turn":
                            # seconds from the end of the turn's speech to the bot's first audio being queued
                            self.observer.turn_answered(self.clock() - job.speech_end_at)
                    self._queue_audio(item, reply_id, chunker, resamplers)
                elif isinstance(item, AdditionalOutputs):
                    self.publish(item)
                elif isinstance(item, Message):
                    self.send(ClientMessage(item.type, item.data))
                elif isinstance(item, Mark):
                    self._queue_mark(reply_id, item.name, chunker)
                elif isinstance(item, Frame):
                    self._queue_frame(item, reply_id, chunker)
                elif isinstance(item, Timings):
                    self.observer.stage_timings(item.stages)
                    self.send(log({"timings": item.stages}))
                elif isinstance(item, EndCall):
                    end_call = True
                    break
                elif isinstance(item, Transfer):
                    transfer_to = item.to
                    break
                else:
                    self._bot_mistake(
                        f"yield:{type(item).__name__}",
                        f"the bot yielded a {type(item).__name__} during {job.kind}, which plays nothing: yield "
                        "Audio(samples, rate), a (rate, ndarray) tuple, AdditionalOutputs, Message, Mark, Frame, "
                        "EndCall or Transfer")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.observer.bot_error()
            self._bot_mistake(f"raise:{type(exc).__name__}", f"the bot raised during {job.kind}: {exc!r}",
                              exc_info=True)
            self.send(ClientMessage("error", f"bot error: {type(exc).__name__}: {exc}"))
        finally:
            self._talking = False
            await outputs.aclose()
        tail = chunker.flush()
        if tail is not None:
            self._tape.play(AudioOut(tail), reply_id)
        if started:
            self._unheard.add(reply_id)
            self._tape.checkpoint(Checkpoint("reply_end", reply_id))
        if end_call:
            if reply_id in self._unheard:
                self._hangup_after = reply_id
            else:
                self.outbox.put(Hangup())
        elif transfer_to is not None:
            self._transfer_once_heard(reply_id, transfer_to)

    # -- transfer ------------------------------------------------------------------------------------

    def _transfer_once_heard(self, reply_id: str, to: str) -> None:
        """The bot yielded Transfer(to): like EndCall, it waits for the words before it to be heard (a barge-in
        does it at once). Where the transport cannot transfer, the bot is told at once."""
        if not self.can_transfer:
            self.transfer_failed(to, "this line cannot be transferred")
            return
        self._transfer_after = (reply_id, to)
        if reply_id not in self._unheard:
            self._request_transfer()

    def _request_transfer(self) -> None:
        assert self._transfer_after is not None
        to = self._transfer_after[1]
        self._transfer_after = None
        logger.info("call %s: transfer requested", self.id, extra={"event": "transfer", "call_id": self.id})
        self.outbox.put(TransferCall(to))

    def transfer_failed(self, to: str, reason: str) -> None:
        """The transfer to `to` did not happen (the transport cannot, or its carrier refused): the call goes on
        and the bot's on_transfer_failed tells the caller why."""
        logger.warning("call %s: transfer failed: %s", self.id, reason,
                       extra={"event": "transfer_failed", "call_id": self.id, "error": reason})
        self.send(ClientMessage("warning", f"transfer failed: {reason}"))
        self._jobs.put_nowait(_Job("transfer_failed", (to, reason)))

    async def _admitted(self, gate: TurnGate, audio: np.ndarray) -> bool:
        """Whether the turn goes to the bot: it holds a stop word (clients get the `stopword` message). A gate
        that fails or times out costs this turn only: warned of, not answered."""
        try:
            word = await gate.admits(audio, self.vad_rate)
        except Exception as exc:
            message = f"the turn was not answered: the stop-word check failed ({exc})"
            logger.warning("call %s: %s", self.id, message, extra={"event": "turn_gate_error", "call_id": self.id})
            self.send(ClientMessage("warning", message))
            return False
        if word is None:
            logger.info("call %s: turn ignored: no stop word in it", self.id,
                        extra={"event": "turn_ignored", "call_id": self.id})
            return False
        self.send(ClientMessage("stopword", word))
        return True

    async def _take_inputs(self) -> tuple[Any, ...]:
        """The inputs `set_input` gave this turn: asked for with `send_input` and awaited up to the input
        timeout where a client can send them; where none can (the phone), the last ones set, at once."""
        if not self.inputs_possible:
            if "inputs" not in self._told:
                self._told.add("inputs")
                logger.info("call %s: the bot wants additional inputs, which %s callers cannot send: its turns get "
                            "the last ones set (none yet), without waiting", self.id, self.session.transport,
                            extra={"event": "inputs_impossible", "call_id": self.id})
            return self.session.inputs
        fresh = self.session.has_fresh_input
        if not fresh:
            self.send(ClientMessage("send_input"))
        started = self.clock()
        inputs = await self.session.take_input(self.input_timeout)
        if not fresh:
            logger.info("call %s: waited %.0f ms for set_input (%s)", self.id, 1000 * (self.clock() - started),
                        "got it" if inputs != () else "none came: INPUT_TIMEOUT_SECONDS",
                        extra={"event": "input_wait", "call_id": self.id})
        return inputs

    def _queue_mark(self, reply_id: str, name: str, chunker: Rechunker) -> None:
        """The bot's Mark: after the audio yielded before it (its last partial frame too), a playback mark."""
        tail = chunker.flush()
        if tail is not None:
            self._tape.play(AudioOut(tail), reply_id)
        self._tape.checkpoint(Checkpoint("bot_mark", reply_id, name))

    def _queue_frame(self, item: Frame, reply_id: str, chunker: Rechunker) -> None:
        """The bot's picture, after the audio yielded before it (its last partial frame too). A transport without
        video drops it."""
        image = np.asarray(item.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            self._bot_mistake("frame-shape", f"the bot yielded a Frame of shape {image.shape} and dtype {image.dtype}: "
                              "a picture is (H, W, 3) uint8")
            return
        tail = chunker.flush()
        if tail is not None:
            self._tape.play(AudioOut(tail), reply_id)
        self.outbox.put(FrameOut(image))

    def _call_bot_hook(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.bot, hook)(*args)
        except Exception as exc:
            self.observer.bot_error()
            self._bot_mistake(f"hook:{hook}", f"the bot's {hook} raised: {exc!r}", exc_info=True)

    def _bot_mistake(self, kind: str, message: str, *, exc_info: bool = False) -> None:
        """A bot error, logged at warning with the call's id once per call and kind (the phone has no client to
        tell), and sent to clients that can read it."""
        self.send(ClientMessage("warning", message))
        if kind in self._told:
            logger.debug("call %s: %s", self.id, message)
            return
        self._told.add(kind)
        logger.warning("call %s: %s", self.id, message, exc_info=exc_info,
                       extra={"event": "bot_error", "call_id": self.id, "error": message})

    def _queue_audio(self, item: Audio, reply_id: str, chunker: Rechunker, resamplers: dict[int, Resampler]) -> None:
        samples = np.asarray(item.samples)
        if np.issubdtype(samples.dtype, np.floating) and samples.size:
            peak = float(np.max(np.abs(samples)))
            if peak > 1.0:
                # Float audio in int16's range (not scaled to ±1) would clip to full-scale noise.
                self._bot_mistake("float-range", f"the bot's float audio peaks at {peak:.1f}, beyond ±1: taken as "
                                  "int16-scaled (divided by 32768); yield floats in [-1, 1] or int16")
                samples = samples / 32768.0
        samples = to_int16(samples)
        if item.sample_rate != self.outbound_rate:
            if item.sample_rate not in resamplers:
                resamplers[item.sample_rate] = Resampler(item.sample_rate, self.outbound_rate)
            samples = resamplers[item.sample_rate].process(samples)
        for frame in chunker.push(samples):
            self._tape.play(AudioOut(frame), reply_id)
