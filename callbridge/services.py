"""What the web routes and the edge share: built once per process and handed to each of them.

`Services` owns the calls in progress: it admits a new call (one rule, `admission`, for the webhook, every
media socket, the WebRTC offer and `/readyz`), builds its runtime, and frees its slot when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from callbridge.bots.base import CallInfo
from callbridge.bots.loader import BotFactory
from callbridge.core.call import Call
from callbridge.core.end_of_turn import EndOfTurnAsker, EndOfTurnModel
from callbridge.core.session import Session
from callbridge.core.turns import TurnConfig
from callbridge.core.vad import VadBatcher
from callbridge.metrics import Metrics
from callbridge.sessions.registry import ConcurrencyLimitReached, Registry, ServiceUnavailable
from callbridge.settings import Settings
from callbridge.transports.twilio_rest import TwilioRest

if TYPE_CHECKING:
    from callbridge.bots.assistant.stop_words import WhisperStopWords

log = logging.getLogger("callbridge")
#: Transports whose callers are on a phone: they can never send `set_input`.
PHONE_TRANSPORTS = frozenset({"twilio", "telnyx", "vonage", "plivo"})


@dataclass(frozen=True)
class Admission:
    """Whether a new call would be taken now, and if not, why."""

    state: Literal["ready", "full", "starting", "draining", "unavailable"]
    calls: int = 0
    reason: str = ""

    @property
    def ready(self) -> bool:
        """Serving (even when every slot is taken): what /readyz reports."""
        return self.state in ("ready", "full")


@dataclass
class Services:
    settings: Settings
    bot_factory: BotFactory
    registry: Registry
    metrics: Metrics = field(default_factory=Metrics)
    vad: VadBatcher | None = None
    end_of_turn: EndOfTurnAsker | None = None  # END_OF_TURN=model's one model for every call
    draining: bool = False
    calls: dict[str, Call] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)  # calls without a runtime here (open_session)
    problem: str = ""  # why the service cannot take calls at all (the bot could not start); /readyz says it
    twilio_rest: TwilioRest | None = None  # outbound calls and transfers; None without REST credentials

    def __post_init__(self) -> None:
        s = self.settings
        self.turn_config = TurnConfig(
            sample_rate=8000, enter_threshold=s.vad_enter_threshold, exit_threshold=s.vad_exit_threshold,
            speech_start_ms=s.speech_start_ms, pause_ms=s.pause_ms, preroll_ms=s.preroll_ms,
            max_turn_seconds=s.max_turn_seconds,
            ask_ms=s.end_of_turn_ask_ms,  # bots see the pause (on_pause) whatever decides the turn's end
            model_threshold=s.end_of_turn_threshold,
            ask_every_ms=s.end_of_turn_ask_every_ms,
        )
        if s.twilio_rest_configured:
            self.twilio_rest = TwilioRest(s.twilio_account_sid, s.twilio_auth_token, s.twilio_api_url,
                                          s.twilio_api_timeout_seconds)
        self.stop_words = self._stop_words()

    def _stop_words(self) -> WhisperStopWords | None:
        """STOP_WORDS' gate, shared by every call; imported only when set (it needs the local Whisper)."""
        if not self.settings.stop_words:
            return None
        from callbridge.bots.assistant.stop_words import WhisperStopWords

        return WhisperStopWords(self.settings.stop_words, self.settings.stop_words_timeout_seconds)

    def load_end_of_turn(self) -> None:
        """With END_OF_TURN=model, load Smart Turn once for this process (before it is ready: blocking)."""
        if self.settings.end_of_turn == "model" and self.end_of_turn is None:
            model = EndOfTurnModel()
            model.probability(np.zeros(8000, np.float32), 8000)  # the first inference, slower, is not a caller's
            self.end_of_turn = EndOfTurnAsker(model, on_inference=self.metrics.end_of_turn_inference_done)

    async def admission(self) -> Admission:
        """The one rule for new calls: not before the models are loaded, not while draining, not without the
        shared registry, not beyond CONCURRENCY_LIMIT."""
        if self.problem:
            return Admission("unavailable", reason=self.problem)
        if self.vad is None:
            return Admission("starting", reason="starting")
        if self.draining:
            return Admission("draining", reason="draining")
        try:
            calls = await self.registry.count()
        except ServiceUnavailable as exc:
            return Admission("unavailable", reason=str(exc))
        if calls >= self.registry.limit:
            return Admission("full", calls, f"at capacity ({calls} calls, CONCURRENCY_LIMIT={self.registry.limit})")
        return Admission("ready", calls)

    async def _claim(self, call_id: str, transport: str) -> Session:
        """A registry slot for a new call: the one limit for every transport; raises a RegistryError when refused."""
        if self.vad is None or self.draining:
            raise ServiceUnavailable("the service is not accepting calls right now")
        try:
            return await self.registry.open(call_id, transport)
        except ConcurrencyLimitReached:
            self.metrics.rejections.inc()
            raise

    async def open_session(self, call_id: str, transport: str) -> Session:
        """A call without audio here (ConversationRelay: the carrier does the speech): its slot and its count,
        no Call runtime (no VAD, no bot); raises a RegistryError when refused. `end_session` frees it; a drain
        gives it the grace period, then the edge closes its socket."""
        session = await self._claim(call_id, transport)
        self.sessions[call_id] = session
        self.metrics.calls.labels(transport).inc()
        self.metrics.calls_in_progress.labels(transport).inc()
        log.info("call %s started on %s", call_id, transport,
                 extra={"event": "call_start", "call_id": call_id, "transport": transport})
        return session

    async def end_session(self, session: Session, turns: int) -> None:
        del self.sessions[session.id]
        await self.registry.close(session.id)
        self.metrics.calls_in_progress.labels(session.transport).dec()
        log.info("call %s ended: %d turns", session.id, turns,
                 extra={"event": "call_end", "call_id": session.id, "transport": session.transport, "turns": turns})

    async def open_call(
        self, call_id: str, transport: str, *, inbound_rate: int, outbound_rate: int,
        parameters: dict[str, str] | None = None,
    ) -> Call:
        """Claim a registry slot and build the call's runtime; raises a RegistryError when refused."""
        session = await self._claim(call_id, transport)
        parameters = dict(parameters or {})
        # The webhook's TwiML says which way the call goes and what answered it (callbridge.web.telephone).
        direction = "outbound" if parameters.pop("Direction", "") == "outbound" else "inbound"
        can_transfer = transport == "twilio" and self.twilio_rest is not None
        info = CallInfo(call_id=call_id, transport=transport, parameters=parameters, direction=direction,
                        answered_by=parameters.pop("AnsweredBy", ""), can_transfer=can_transfer)
        try:
            bot = self.bot_factory(info)
        except Exception:
            await self.registry.close(call_id)
            raise
        call = Call(
            session, bot, self.vad, inbound_rate=inbound_rate, outbound_rate=outbound_rate,
            turn_config=self.turn_config, barge_in=self.settings.barge_in,
            backchannel_resume=self.settings.backchannel_resume, backchannel_max_ms=self.settings.backchannel_max_ms,
            input_timeout=self.settings.input_timeout_seconds, inputs_possible=transport not in PHONE_TRANSPORTS,
            inbound_backlog_seconds=self.settings.inbound_backlog_seconds,
            idle_seconds=self.settings.idle_seconds, idle_prompts=self.settings.idle_prompts,
            can_transfer=can_transfer,
            observer=self.metrics, end_of_turn=self.end_of_turn,
            turn_gate=self.stop_words,
        )
        self.calls[call_id] = call
        self.metrics.calls.labels(transport).inc()
        self.metrics.calls_in_progress.labels(transport).inc()
        log.info("call %s started on %s", call_id, transport,
                 extra={"event": "call_start", "call_id": call_id, "transport": transport})
        return call

    async def end_call(self, call: Call) -> None:
        """Stop the bot and free the call's slot; safe to call more than once."""
        await call.close()
        if self.calls.pop(call.id, None) is not None:
            await self.registry.close(call.id)
            self.metrics.calls_in_progress.labels(call.session.transport).dec()
            log.info("call %s ended: %d turns, %d barge-ins (%d resumed)", call.id, call.stats.turns,
                     call.stats.barge_ins, call.stats.replies_resumed,
                     extra={"event": "call_end", "call_id": call.id, "transport": call.session.transport,
                            "turns": call.stats.turns, "barge_ins": call.stats.barge_ins,
                            "replies_resumed": call.stats.replies_resumed,
                            "inbound_dropped_seconds": round(call.stats.inbound_dropped_seconds, 3)})

    async def drain(self, grace_seconds: float, farewell_seconds: float = 5.0) -> None:
        """Refuse new calls, let calls in progress finish for up to `grace_seconds`, then have the bot
        say goodbye to those left (up to `farewell_seconds` more) and end whatever remains."""
        self.draining = True
        loop = asyncio.get_running_loop()
        log.info("draining: %d calls in progress, grace %.0f s", len(self.calls), grace_seconds,
                 extra={"event": "drain", "calls": len(self.calls)})
        deadline = loop.time() + grace_seconds
        while (self.calls or self.sessions) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.calls:
            log.info("grace period over: saying goodbye to %d calls", len(self.calls))
            for call in list(self.calls.values()):
                call.say_goodbye()
            deadline = loop.time() + farewell_seconds
            while self.calls and loop.time() < deadline:
                await asyncio.sleep(0.1)
        for call in list(self.calls.values()):
            await self.end_call(call)

    async def close(self) -> None:
        """End the calls still open and stop the VAD (the app has stopped serving)."""
        for call in list(self.calls.values()):
            await self.end_call(call)
        if self.vad is not None:
            await self.vad.close()
        if self.end_of_turn is not None:
            self.end_of_turn.close()
        if self.twilio_rest is not None:
            await self.twilio_rest.aclose()
