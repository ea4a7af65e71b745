"""A ConversationRelay session's life: Twilio's text events to the assistant's brain, its tokens back.

Twilio does the speech, so nothing here decodes audio, runs the VAD or loads a speech model: a session is a
registry slot (counted against the one CONCURRENCY_LIMIT, like every call) and a `TextConversation`. A prompt
(or a key) starts a reply, streamed out token by token as the brain writes it; an `interrupt` cancels the reply
at once (the brain's stream is closed) and the history keeps only what Twilio says the caller heard. Bad input
gets what a media socket gets: the socket closed with a fitting code and the reason, the slot freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from callbridge.bots.assistant.brain import EndCallAction, keypress_message
from callbridge.bots.assistant.conversation import TextConversation, assistant_stages
from callbridge.core.session import Session
from callbridge.edge.websocket import ClientGone, WebSocket
from callbridge.services import Services
from callbridge.sessions.registry import ConnectionAlreadyExists, RegistryError
from callbridge.transports import relay, twilio
from callbridge.transports.media import (
    INTERNAL_ERROR,
    NORMAL,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    Dtmf,
    ProtocolError,
    Start,
    websocket_url,
)
from callbridge.transports.relay import Interrupt, Prompt, RelayEvent, RelayProtocol, Reported

logger = logging.getLogger("callbridge.relay")

#: What `end` hands on to `<Connect action>` (Twilio passes it as HandoffData) when the assistant hangs up.
END_CALL_HANDOFF = json.dumps({"reasonCode": "end_call", "reason": "the assistant ended the call"})
#: Events that may wait for the session to open (the registry may have to ask Redis), at most.
MAX_OPENING_EVENTS = 32


class RelaySocket:
    """One ConversationRelay socket: its events to a TextConversation, the replies back as `text` tokens."""

    def __init__(self, services: Services, ws: WebSocket, protocol: RelayProtocol) -> None:
        self.services = services
        self.ws = ws
        self.protocol = protocol
        self.settings = services.settings
        self.label = "-"
        self.conversation: TextConversation | None = None
        self.turns = 0
        loop = asyncio.get_running_loop()
        self._start: asyncio.Future[Start] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()  # end_call, bad input, or the client gone
        self._opening: list[RelayEvent] = []  # events that came while the session was being opened
        self._reply: asyncio.Task[None] | None = None

    # The one inbound path.

    def on_message(self, raw: str | bytes) -> None:
        if self._ended.done():
            return
        try:
            event = self.protocol.receive(raw)
        except ProtocolError as exc:
            self._end(exc)
            return
        if event is None:
            return
        if isinstance(event, Start):
            self.label = event.call_id
            self._start.set_result(event)
        elif self.conversation is None:
            self._opening.append(event)
            if len(self._opening) > MAX_OPENING_EVENTS:
                self._end(ProtocolError(f"more than {MAX_OPENING_EVENTS} messages before the session opened"))
        else:
            self._apply(self.conversation, event)

    def on_gone(self, reason: str) -> None:
        self._end(ClientGone(reason))

    def _apply(self, conversation: TextConversation, event: RelayEvent) -> None:
        if isinstance(event, Prompt):
            self._answer(conversation, {"role": "user", "content": event.text})
        elif isinstance(event, Dtmf):
            self._answer(conversation, keypress_message(event.digit))
        elif isinstance(event, Interrupt):
            self._stop_reply()  # at once: the brain's stream is closed as the task unwinds
            conversation.interrupted(event.heard)
            logger.info("relay %s: interrupted after %d ms", self.label, event.heard_ms)
        elif isinstance(event, Reported):
            self.services.metrics.errors.labels("relay_reported").inc()
            logger.warning("relay %s: Twilio reports: %s", self.label, event.description,
                           extra={"event": "relay_error", "call_id": self.label, "error": event.description})

    def _end(self, error: BaseException | None) -> None:
        if self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)
            self._ended.exception()  # marked read: run() reads it while the session is up, nobody after it ends
        if not self._start.done():
            self._start.cancel()

    # Replies: one at a time; a new prompt supersedes the reply still being written.

    def _answer(self, conversation: TextConversation, message: dict[str, str]) -> None:
        self.turns += 1
        self._reply = asyncio.ensure_future(self._speak(conversation, message, self._reply))

    def _stop_reply(self) -> None:
        if self._reply is not None:
            self._reply.cancel()
            self._reply = None

    async def _speak(self, conversation: TextConversation, message: dict[str, str],
                     superseded: asyncio.Task[None] | None) -> None:
        if superseded is not None:  # its tokens end before ours begin
            superseded.cancel()
            await asyncio.gather(superseded, return_exceptions=True)
        asked = time.perf_counter()
        first = True
        end_call = False
        try:
            # Closed however the reply stops (an interrupt may cancel it while it waits on the socket): the brain's
            # stream with it, at once.
            async with contextlib.aclosing(conversation.reply(message)) as items:
                async for item in items:
                    if isinstance(item, EndCallAction):
                        end_call = True
                        continue
                    if isinstance(item, str) and item:
                        if first:
                            first = False
                            self.services.metrics.stage_timings({"llm_first_token": time.perf_counter() - asked})
                        await self.ws.send(self.protocol.text(item, last=False))
            await self.ws.send(self.protocol.text("", last=True))
            if end_call:
                await self.ws.send(self.protocol.end(END_CALL_HANDOFF))
                logger.info("relay %s: the assistant ended the call", self.label)
                self._end(None)
        except ClientGone as gone:
            self._end(gone)
        except Exception as exc:
            self._end(exc)

    # The socket's life.

    async def _open(self) -> Session:
        timeout = self.settings.media_start_timeout_seconds
        await asyncio.wait([self._start, self._ended], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._start.done():  # an idle socket would hold its file descriptor for ever
            raise ProtocolError(f"no setup message within {timeout:g} s")
        if self._ended.done():
            self._ended.result()  # raises what ended the socket before setup
            raise ClientGone
        start = self._start.result()
        stages = assistant_stages(self.services.bot_factory)
        if stages is None:
            raise ProtocolError(f"ConversationRelay needs BOT=assistant (its brain answers), not {self.settings.bot}",
                                INTERNAL_ERROR)
        if not await self.services.registry.claim_once(start.claim, start.claim_seconds):
            raise ProtocolError("call token already used: it opens one session")
        session = await self.services.open_session(start.call_id, self.protocol.transport)
        self.conversation = TextConversation(stages, start.call_id)
        for event in self._opening:
            self._apply(self.conversation, event)
        self._opening.clear()
        return session

    async def run(self) -> None:
        self.ws.listen(self.on_message, self.on_gone)
        session: Session | None = None
        try:
            session = await self._open()
            await asyncio.shield(self._ended)
            await self.ws.close(NORMAL)
        except ClientGone as gone:
            if gone.reason:
                logger.warning("relay %s: dropped: %s", self.label, gone.reason,
                               extra={"event": "client_dropped", "call_id": self.label, "error": gone.reason})
            else:
                logger.info("relay %s: the client closed the socket", self.label)
        except ProtocolError as exc:
            self.services.metrics.errors.labels("protocol").inc()
            logger.warning("relay %s: %s; closing with %d", self.label, exc, exc.code,
                           extra={"event": "protocol_error", "call_id": self.label, "error": str(exc),
                                  "code": exc.code})
            await self.ws.close(exc.code, str(exc)[:120])
        except RegistryError as exc:
            logger.warning("relay %s refused: %s", self.label, exc)
            with contextlib.suppress(ClientGone):
                await self.ws.send(json.dumps(exc.body()))
            code = POLICY_VIOLATION if isinstance(exc, ConnectionAlreadyExists) else TRY_AGAIN_LATER
            await self.ws.close(code, exc.code)
        except Exception:
            self.services.metrics.errors.labels("internal").inc()
            logger.exception("relay %s failed", self.label, extra={"event": "internal_error", "call_id": self.label})
            with contextlib.suppress(Exception):
                await self.ws.close(INTERNAL_ERROR, "internal error")
        finally:
            if self._reply is not None:
                self._reply.cancel()
                await asyncio.gather(self._reply, return_exceptions=True)
            if session is not None:
                await self.services.end_session(session, self.turns)


async def relay_socket(services: Services, ws: WebSocket) -> None:
    """`WS /relay/handler`: the upgrade's X-Twilio-Signature checked (over the wss:// URL, no parameters), then the
    session served."""
    settings = services.settings
    base = settings.public_base("https" if ws.scheme == "wss" else "http", ws.host)
    if not twilio.signature_valid(settings.twilio_auth_token, websocket_url(base, relay.PATH), {}, ws.headers):
        services.metrics.errors.labels("signature").inc()
        logger.warning("relay session refused: bad or missing X-Twilio-Signature")
        await ws.close(POLICY_VIOLATION, "invalid Twilio signature")
        return
    secret = twilio.token_secret(settings.call_token_secret, settings.twilio_auth_token)
    await RelaySocket(services, ws, RelayProtocol(secret, settings.max_message_bytes)).run()
