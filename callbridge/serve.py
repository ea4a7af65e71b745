"""The Quart app factory and the Hypercorn runner.

Everything a request handler needs lives on one `Services` object created here and reached through
`services()`; there are no module-level globals, so tests can build as many apps as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from quart import Quart, current_app

from callbridge.bots.base import CallInfo
from callbridge.bots.loader import BotFactory, load_bot
from callbridge.codec import SUPPORTED_RATES, Resampler
from callbridge.core.call import Call
from callbridge.core.turns import TurnConfig
from callbridge.core.vad import VadBatcher, load_vad
from callbridge.edge.server import ClientAddress, Edge
from callbridge.edge.websocket import Handler
from callbridge.logs import configure_logging
from callbridge.metrics import Metrics
from callbridge.sessions.registry import ConcurrencyLimitReached, MemoryRegistry, RegistryError, UnknownSession
from callbridge.sessions.shared import SharedRegistry, SharedRegistryUnavailable
from callbridge.settings import Settings
from callbridge.transports.browser import OFFER_PATH
from callbridge.transports.browser import offer as browser_offer
from callbridge.transports.twilio import HANDLER_PATH, telephone
from callbridge.transports.twilio import handler as twilio_handler
from callbridge.web.health import health
from callbridge.web.io import api
from callbridge.web.softphone import softphone
from callbridge.web.webrtc import webrtc

log = logging.getLogger("callbridge")

#: The µ-law media sockets: served by the edge, or through ASGI when a connection reaches Hypercorn.
MEDIA_ROUTES: dict[str, Handler] = {HANDLER_PATH: twilio_handler, OFFER_PATH: browser_offer}

__all__ = ["Services", "configure_logging", "create_app", "serve", "services"]


class ServeError(Exception):
    """The service cannot start (e.g. the port is taken); the message says why."""


class ServiceUnavailable(RegistryError):
    """New calls are refused while the service starts or drains."""

    code = "service_unavailable"


@dataclass
class Services:
    """What the request handlers share: settings, the registry, the VAD, the bot factory, metrics."""

    settings: Settings
    bot_factory: BotFactory
    registry: MemoryRegistry
    metrics: Metrics = field(default_factory=Metrics)
    vad: VadBatcher | None = None
    draining: bool = False
    calls: dict[str, Call] = field(default_factory=dict)
    shared: SharedRegistry | None = None  # with REDIS_URL: ids, limit, inputs and outputs across processes

    @property
    def ready(self) -> bool:
        return self.vad is not None and not self.draining

    async def open_call(
        self, call_id: str, transport: str, *, inbound_rate: int, outbound_rate: int,
        parameters: dict[str, str] | None = None,
    ) -> Call:
        """Claim a registry slot and build the call's runtime; raises a RegistryError when refused."""
        if not self.ready or self.vad is None:
            raise ServiceUnavailable("the service is not accepting calls right now")
        try:
            if self.shared is not None:
                try:
                    await self.shared.claim(call_id)
                except SharedRegistryUnavailable as exc:
                    log.error("call %s refused: %s", call_id, exc)
                    with contextlib.suppress(SharedRegistryUnavailable):  # in case the claim went through
                        await self.shared.release(call_id)
                    raise ServiceUnavailable("the service cannot reach its shared registry") from None
            session = self.registry.open(call_id, transport)
        except ConcurrencyLimitReached:
            self.metrics.rejections.inc()
            raise
        try:
            bot = self.bot_factory(CallInfo(call_id=call_id, transport=transport, parameters=parameters or {}))
        except Exception:
            await self._release(call_id)
            raise
        if self.shared is not None:
            self.shared.mirror(session)
        call = Call(
            session, bot, self.vad, inbound_rate=inbound_rate, outbound_rate=outbound_rate,
            turn_config=partial(TurnConfig.from_settings, self.settings), barge_in=self.settings.barge_in,
            input_timeout=self.settings.input_timeout_seconds, observer=self.metrics,
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
            await self._release(call.id)
            self.metrics.calls_in_progress.labels(call.session.transport).dec()
            log.info("call %s ended: %d turns, %d barge-ins", call.id, call.stats.turns, call.stats.barge_ins,
                     extra={"event": "call_end", "call_id": call.id, "transport": call.session.transport,
                            "turns": call.stats.turns, "barge_ins": call.stats.barge_ins})

    async def _release(self, call_id: str) -> None:
        self.registry.close(call_id)
        if self.shared is not None:
            try:
                await self.shared.release(call_id)
            except SharedRegistryUnavailable as exc:
                log.error("call %s: could not free its shared slot: %s", call_id, exc)

    async def count(self) -> int:
        """Calls in progress here: on every worker of this replica when the registry is shared (then it
        raises SharedRegistryUnavailable when Redis cannot be reached)."""
        return await self.shared.count() if self.shared is not None else self.registry.count()

    async def set_input(self, call_id: str, *args: Any) -> None:
        """`set_input` for a call in this process or, with a shared registry, in any other."""
        try:
            self.registry.set_input(call_id, *args)
        except UnknownSession:
            if self.shared is None:
                raise
            await self.shared.send_command(call_id, "input", list(args))

    async def output_stream(self, call_id: str) -> AsyncIterator[tuple[Any, ...]]:
        """`output_stream` of a call in this process or, with a shared registry, in any other."""
        try:
            return self.registry.output_stream(call_id)
        except UnknownSession:
            if self.shared is None:
                raise
            return await self.shared.output_stream(call_id)

    async def drain(self, grace_seconds: float, farewell_seconds: float = 5.0) -> None:
        """Refuse new calls, let calls in progress finish for up to `grace_seconds`, then have the bot
        say goodbye to those left (up to `farewell_seconds` more) and end whatever remains."""
        self.draining = True
        loop = asyncio.get_running_loop()
        log.info("draining: %d calls in progress, grace %.0f s", len(self.calls), grace_seconds,
                 extra={"event": "drain", "calls": len(self.calls)})
        deadline = loop.time() + grace_seconds
        while self.calls and loop.time() < deadline:
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


def services() -> Services:
    """The Services of the app handling the current request."""
    return current_app.extensions["callbridge"]


def create_app(settings: Settings, worker: int = 0) -> Quart:
    """The Quart app; `worker` numbers this process among WORKERS (it names the process in Redis)."""
    app = Quart("callbridge.web")
    state = Services(
        settings=settings, bot_factory=load_bot(settings.bot), registry=MemoryRegistry(settings.concurrency_limit)
    )
    if settings.redis_url:
        # One replica = one host and port: two services on one machine sharing a Redis keep their own calls,
        # limits and worker names apart (Kubernetes pods differ by host name, the port is the same).
        replica = f"{socket.gethostname()}:{settings.port}"
        state.shared = SharedRegistry(settings.redis_url, replica, f"{replica}/{worker}", settings.concurrency_limit)
    app.extensions["callbridge"] = state
    app.register_blueprint(health)
    app.register_blueprint(api)
    app.register_blueprint(telephone)
    # Registered before `_stop` below: at shutdown it closes the peer connections still open, then the
    # calls are ended.
    app.register_blueprint(webrtc)
    app.register_blueprint(softphone)


    @app.before_serving
    async def _start() -> None:
        if not settings.public_url:
            log.warning("PUBLIC_URL is not set: Twilio stream URLs are built from each webhook's Host header")
        await asyncio.to_thread(prepare_resamplers)
        model = await asyncio.to_thread(load_vad, settings.vad_backend)
        state.vad = VadBatcher(model, on_batch=state.metrics.vad_batch, in_thread=settings.vad_in_thread)
        log.info("ready: bot=%s vad=%s (%s) limit=%d", settings.bot, settings.vad_backend,
                 "own thread" if settings.vad_in_thread else "on the event loop", settings.concurrency_limit)

    @app.after_serving
    async def _stop() -> None:
        for call in list(state.calls.values()):
            await state.end_call(call)
        if state.vad is not None:
            await state.vad.close()

    async def _local_input(call_id: str, args: Any) -> None:
        state.registry.set_input(call_id, *args)

    if state.shared is not None:
        state.shared.on_command("input", _local_input)
    return app


def prepare_resamplers() -> None:
    """Design every resampling filter at start-up: scipy.signal takes ~1.5 s to import, never mid-call."""
    for source, target in itertools.permutations(SUPPORTED_RATES, 2):
        Resampler(source, target)


async def serve(settings: Settings, worker: int = 0) -> None:
    """Serve: the edge listens on HOST:PORT and serves the media sockets; Hypercorn serves the Quart app on
    a private Unix socket behind it (callbridge.edge.server). SIGTERM drains (new calls refused, calls in
    progress finish within SHUTDOWN_GRACE_SECONDS, then the bot says goodbye) and exits; a second signal
    stops at once. With WORKERS > 1 this is one of several processes sharing the port (callbridge.workers)."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    app = create_app(settings, worker)
    state: Services = app.extensions["callbridge"]
    app.asgi_app = ClientAddress(app.asgi_app)  # type: ignore[method-assign]
    if state.shared is not None:
        try:
            await state.shared.start()
        except SharedRegistryUnavailable as exc:
            raise ServeError(str(exc)) from None
    private = tempfile.mkdtemp(prefix="callbridge-")  # mode 0700: only this user reaches Hypercorn
    upstream = os.path.join(private, "http.sock")
    config = Config()
    config.bind = [f"unix:{upstream}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, printed once
    config.graceful_timeout = 5.0  # calls have drained by the time Hypercorn is asked to stop
    # A hard cap well above MAX_MESSAGE_BYTES; the transports enforce the setting with a clear error.
    config.websocket_max_message_size = settings.max_message_bytes * 4
    edge = Edge(state, MEDIA_ROUTES, upstream, max_size=settings.max_message_bytes * 4)

    stop = asyncio.Event()
    hypercorn_stop = asyncio.Event()
    drain: asyncio.Task[None] | None = None

    def on_signal(sig: signal.Signals) -> None:
        nonlocal drain
        if drain is not None:
            log.info("%s received again: stopping now", sig.name)
            stop.set()
            return
        log.info("%s received: shutting down", sig.name)
        drain = asyncio.create_task(state.drain(settings.shutdown_grace_seconds))
        drain.add_done_callback(lambda _: stop.set())

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    http = asyncio.create_task(
        hypercorn_serve(app, config, shutdown_trigger=hypercorn_stop.wait)  # type: ignore[arg-type]
    )
    try:
        # Hypercorn binds once the app has started (VAD loaded): then the edge opens the public port.
        while not os.path.exists(upstream):
            if http.done():
                http.result()
                raise RuntimeError("Hypercorn stopped before it listened")
            await asyncio.sleep(0.02)
        try:
            await edge.start(settings.host, settings.port, reuse_port=settings.workers > 1)
        except OSError as exc:
            raise ServeError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
        log.info("serving on http://%s:%d%s", settings.host, settings.port,
                 f" (worker {worker} of {settings.workers})" if settings.workers > 1 else "")
        await stop.wait()
    finally:
        await edge.close()
        hypercorn_stop.set()
        await http
        if state.shared is not None:
            await state.shared.close()
        shutil.rmtree(private, ignore_errors=True)
    log.info("stopped")
