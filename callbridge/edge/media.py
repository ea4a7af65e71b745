"""A µ-law media socket's life, for any of the wire protocols in callbridge.transports.

Every inbound message takes one path: the socket hands it to `MediaSocket.on_message` as it arrives, the
protocol turns it into an event, and the event goes to the call at once (media, playback, DTMF are plain
calls on the Call; nothing waits). Events that arrive while the call is being opened (the registry may
have to ask Redis) are kept and applied, in order, once it is. Outbound, `PacedWriter` drains the call's
outbox onto the socket in real time with a small lead, so a barge-in flush leaves almost nothing queued at
the far end. Whatever goes wrong, the socket is closed with a fitting code and the call freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, Hangup, PlaybackMark, TransferCall
from callbridge.edge.websocket import ClientGone, Route, WebSocket
from callbridge.services import Services
from callbridge.sessions.registry import ConnectionAlreadyExists, RegistryError
from callbridge.transports import browser, plivo, relay, telnyx, twilio, vonage
from callbridge.transports.media import (
    INTERNAL_ERROR,
    NORMAL,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    Dtmf,
    Event,
    Media,
    MediaProtocol,
    Ping,
    Played,
    ProtocolError,
    Start,
    Stop,
    websocket_url,
)
from callbridge.transports.twilio_rest import TwilioRestError

logger = logging.getLogger("callbridge.media")

#: Reply audio goes out in messages of up to this many 20 ms frames: a fifth of the messages (socket writes,
#: timer wake-ups, frames for the client to parse) of one frame each. The caller then holds between the
#: lead and the lead + 80 ms of audio; a barge-in's `clear` empties that buffer.
FRAMES_PER_MESSAGE = 5
#: Protocol replies (pongs) waiting for the socket to take them, at most.
MAX_PENDING_REPLIES = 8


class PacedWriter:
    """Sends a Call's outbound items in order, audio paced to real time plus `lead` seconds.

    `play_end` estimates when the far end will have played everything sent so far; `on_reply_end(reply_id,
    play_end)` is told when each reply's audio has been sent, `on_transfer(number)` when the call asks to be
    handed on (only calls that can be transferred do)."""

    def __init__(self, call: Call, protocol: MediaProtocol, ws: WebSocket, lead: float,
                 on_reply_end: Callable[[str, float], None],
                 on_transfer: Callable[[str], None] | None = None,
                 frames_per_message: int = FRAMES_PER_MESSAGE) -> None:
        self.call = call
        self.frames_per_message = frames_per_message
        self.protocol = protocol
        self.ws = ws
        self.lead = lead
        self.on_reply_end = on_reply_end
        self.on_transfer = on_transfer
        self.play_end = 0.0

    async def run(self) -> None:
        """Returns when the call asks to hang up; raises if the socket fails."""
        loop = asyncio.get_running_loop()
        outbox = self.call.outbox
        protocol = self.protocol
        while True:
            item = await outbox.get()
            if isinstance(item, AudioOut):
                now = loop.time()
                self.play_end = max(self.play_end, now)
                due = self.play_end - self.lead
                if due > now and await outbox.pause_until(due):
                    continue  # a barge-in dropped the reply meanwhile: this audio goes with it, the Flush is next
                frames = [item.samples]
                while len(frames) < self.frames_per_message and isinstance(outbox.peek(), AudioOut):
                    frames.append(outbox.get_nowait().samples)  # type: ignore[union-attr]
                samples = np.concatenate(frames) if len(frames) > 1 else frames[0]
                await self.ws.send(protocol.media(samples))
                self.play_end += len(samples) / self.call.outbound_rate
            elif isinstance(item, PlaybackMark):
                if (mark := protocol.mark(item.name)) is not None:
                    await self.ws.send(mark)
                self.on_reply_end(item.name, self.play_end)
            elif isinstance(item, Flush):
                self.play_end = loop.time()
                await self.ws.send(protocol.clear())
            elif isinstance(item, ClientMessage):
                if (text := protocol.message(item)) is not None:
                    await self.ws.send(text)
                else:
                    logger.debug("%s %s: %s %s", protocol.transport, self.call.id, item.type, item.data)
            elif isinstance(item, TransferCall) and self.on_transfer is not None:
                self.on_transfer(item.to)
            elif isinstance(item, Hangup):
                return


async def run_until_first_done(*coroutines: Awaitable[Any]) -> None:
    """Run the socket's watchers; when one ends (or fails), cancel the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


class MediaSocket:
    """One media socket: the protocol's events to a Call, the Call's output through the PacedWriter
    (`frames_per_message` 20 ms frames of audio per message at most: 1 where the wire wants each frame alone)."""

    def __init__(self, services: Services, ws: WebSocket, protocol: MediaProtocol,
                 frames_per_message: int = FRAMES_PER_MESSAGE) -> None:
        self.services = services
        self.frames_per_message = frames_per_message
        self.ws = ws
        self.protocol = protocol
        self.settings = services.settings
        self.label = "-"
        self.call: Call | None = None
        loop = asyncio.get_running_loop()
        self._start: asyncio.Future[Start] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()  # stop, bad input, or the client gone
        self._opening: list[Event] = []  # events that came while the call was being opened
        self._opening_samples = 0  # the audio among them
        self._timers: list[asyncio.TimerHandle] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._call_sid = ""  # Twilio's id of the call, which a transfer redirects
        self._transfer: asyncio.Task[None] | None = None

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
        elif self.call is None:
            self._opening.append(event)
            if isinstance(event, Media):  # the Call's backlog cap, before there is a Call
                self._opening_samples += len(event.pcm)
                if self._opening_samples > self.settings.inbound_backlog_seconds * self.protocol.rate:
                    self._end(self._flooding())
        else:
            self._apply(self.call, event)

    def on_gone(self, reason: str) -> None:
        self._end(ClientGone(reason))

    def _apply(self, call: Call, event: Event) -> None:
        if isinstance(event, Media):
            if not call.push_audio(event.pcm):
                self._end(self._flooding())
        elif isinstance(event, Played):
            call.playback_finished(event.name)
        elif isinstance(event, Dtmf):
            call.push_dtmf(event.digit)
        elif isinstance(event, Ping):
            if (pong := self.protocol.pong()) is not None:
                self._send_soon(pong)
        elif isinstance(event, Stop):
            logger.info("%s %s: stop", self.protocol.transport, self.label)
            self._end(None)

    def _flooding(self) -> ProtocolError:
        """Caller audio beyond the backlog cap: the socket closes (Call.push_audio says why)."""
        return ProtocolError(f"caller audio arrives faster than real time: more than "
                             f"{self.settings.inbound_backlog_seconds:g} s waiting (INBOUND_BACKLOG_SECONDS)")

    def _end(self, error: BaseException | None) -> None:
        if self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)
            self._ended.exception()  # marked read: run() reads it while the call is up, nobody after it ends
        if not self._start.done():
            self._start.cancel()

    def _send_soon(self, text: str) -> None:
        """A reply the protocol owes (a pong) sent beside the writer. A few may be in flight; beyond that a client
        that pings without reading its socket gets no more: nothing piles up for it."""
        if len(self._sends) >= MAX_PENDING_REPLIES:
            return
        task = asyncio.ensure_future(self.ws.send(text))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # Outbound playback without echoes: a reply counts as heard when its paced audio has played out.

    def _reply_sent(self, reply_id: str, play_end: float) -> None:
        if not self.protocol.echoes_marks and self.call is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_at(play_end, self.call.playback_finished, reply_id))

    # Transfer: Twilio's REST API redirects the live call to `<Dial>`; Twilio then ends this stream.

    def _hand_on(self, to: str) -> None:
        if self._transfer is None or self._transfer.done():
            self._transfer = asyncio.ensure_future(self._redirect(to))

    async def _redirect(self, to: str) -> None:
        call, rest = self.call, self.services.twilio_rest
        assert call is not None and rest is not None  # only Twilio calls with REST credentials can transfer
        try:
            await rest.transfer(self._call_sid, to)
        except TwilioRestError as exc:
            self.services.metrics.errors.labels("twilio_rest").inc()
            logger.warning("%s %s: transfer failed: %s", self.protocol.transport, self.label, exc)
            call.transfer_failed(to, "the phone system refused the transfer")
            return
        logger.info("%s %s: transferred; the stream ends", self.protocol.transport, self.label,
                    extra={"event": "transferred", "call_id": self.label})

    # The socket's life.

    async def _until_ended(self) -> None:
        await asyncio.shield(self._ended)  # shielded: cancelling this watcher leaves the outcome readable

    async def _open(self) -> Call:
        timeout = self.settings.media_start_timeout_seconds
        await asyncio.wait([self._start, self._ended], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._start.done():  # an idle socket would hold its file descriptor for ever
            raise ProtocolError(f"no start message within {timeout:g} s")
        if self._ended.done():
            self._ended.result()  # raises what ended the socket before start
            raise ClientGone  # a stop before start
        start = self._start.result()
        self._call_sid = start.parameters.get("CallSid", "")
        if start.claim and not await self.services.registry.claim_once(start.claim, start.claim_seconds):
            raise ProtocolError("call token already used: it opens one stream")
        call = await self.services.open_call(
            start.call_id, self.protocol.transport, inbound_rate=self.protocol.rate,
            outbound_rate=self.protocol.rate, parameters=start.parameters,
        )
        self.call = call
        for event in self._opening:
            self._apply(call, event)
        self._opening.clear()
        return call

    async def run(self) -> None:
        self.ws.listen(self.on_message, self.on_gone)
        transport = self.protocol.transport
        try:
            call = await self._open()
            call.start()
            writer = PacedWriter(call, self.protocol, self.ws, self.settings.outbound_lead_ms / 1000,
                                 self._reply_sent, self._hand_on, self.frames_per_message)
            await run_until_first_done(self._until_ended(), writer.run())
            await self.ws.close(NORMAL)
        except ClientGone as gone:
            if gone.reason:
                logger.warning("%s %s: dropped: %s", transport, self.label, gone.reason,
                               extra={"event": "client_dropped", "call_id": self.label, "error": gone.reason})
            else:
                logger.info("%s %s: the client closed the socket", transport, self.label)
        except ProtocolError as exc:
            self.services.metrics.errors.labels("protocol").inc()
            logger.warning("%s %s: %s; closing with %d", transport, self.label, exc, exc.code,
                           extra={"event": "protocol_error", "call_id": self.label, "error": str(exc),
                                  "code": exc.code})
            if (text := self.protocol.error(exc)) is not None:
                with contextlib.suppress(ClientGone):
                    await self.ws.send(text)
            await self.ws.close(exc.code, str(exc)[:120])
        except RegistryError as exc:
            logger.warning("%s %s refused: %s", transport, self.label, exc)
            with contextlib.suppress(ClientGone):
                await self.ws.send(json.dumps(exc.body()))
            code = POLICY_VIOLATION if isinstance(exc, ConnectionAlreadyExists) else TRY_AGAIN_LATER
            await self.ws.close(code, exc.code)
        except Exception:
            self.services.metrics.errors.labels("internal").inc()
            logger.exception("%s %s failed", transport, self.label,
                             extra={"event": "internal_error", "call_id": self.label})
            with contextlib.suppress(Exception):
                await self.ws.close(INTERNAL_ERROR, "internal error")
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in list(self._sends):
                task.cancel()
            if self._transfer is not None:
                # Twilio may end the stream before it answers the redirect: its outcome is still logged (within
                # TWILIO_API_TIMEOUT_SECONDS), and a request cut off half-sent would leave the caller in doubt.
                await asyncio.gather(self._transfer, return_exceptions=True)
            if self.call is not None:
                await self.services.end_call(self.call)


def media_routes(services: Services) -> dict[str, Route]:
    """The edge's media WebSocket routes: Twilio's, Telnyx's and Plivo's streams and Vonage's socket (each
    admitted by its per-call token, made by the signed webhook), the browser's µ-law socket (only pages of the
    allowed origins may open that one; the carriers send no Origin) and ConversationRelay's text socket."""
    settings = services.settings
    max_bytes = settings.max_message_bytes

    async def twilio_stream(ws: WebSocket) -> None:
        base = settings.public_base("https" if ws.scheme == "wss" else "http", ws.host)
        if not twilio.signature_valid(settings.twilio_auth_token, websocket_url(base, twilio.PATH), {}, ws.headers):
            services.metrics.errors.labels("signature").inc()
            logger.warning("stream refused: bad or missing X-Twilio-Signature")
            await ws.close(POLICY_VIOLATION, "invalid Twilio signature")
            return
        secret = twilio.token_secret(settings.call_token_secret, settings.twilio_auth_token)
        await MediaSocket(services, ws, twilio.TwilioProtocol(secret, max_bytes)).run()

    async def vonage_socket(ws: WebSocket) -> None:
        # Each binary message must be one 20 ms frame (640 bytes): Vonage's documented restriction.
        secret = twilio.token_secret(settings.call_token_secret, settings.vonage_signature_secret)
        await MediaSocket(services, ws, vonage.VonageProtocol(secret, max_bytes), frames_per_message=1).run()

    async def telnyx_stream(ws: WebSocket) -> None:
        # No signature on the upgrade: the per-call token in `start`, from the signed webhook, admits the call.
        secret = twilio.token_secret(settings.call_token_secret, settings.twilio_auth_token)
        await MediaSocket(services, ws, telnyx.TelnyxProtocol(secret, max_bytes)).run()

    async def plivo_stream(ws: WebSocket) -> None:
        secret = twilio.token_secret(settings.call_token_secret, settings.plivo_auth_token)
        await MediaSocket(services, ws, plivo.PlivoProtocol(secret, max_bytes, settings.plivo_auth_id)).run()

    async def browser_socket(ws: WebSocket) -> None:
        await MediaSocket(services, ws, browser.BrowserProtocol(max_bytes)).run()

    def browser_origin(headers: dict[str, str]) -> str | None:
        return settings.origin_refusal(headers.get("origin"), headers.get("host", ""))

    async def relay_session(ws: WebSocket) -> None:
        from callbridge.edge.relay import relay_socket  # it imports the assistant: only once a session comes

        await relay_socket(services, ws)

    ping, send = settings.media_ping_timeout_seconds, settings.media_send_timeout_seconds
    return {twilio.PATH: Route(twilio_stream, ping, send),
            telnyx.PATH: Route(telnyx_stream, ping, send),
            plivo.PATH: Route(plivo_stream, ping, send),
            browser.PATH: Route(browser_socket, ping, send, admission=browser_origin),
            relay.PATH: Route(relay_session, ping, send),
            vonage.PATH: Route(vonage_socket, ping, send)}
