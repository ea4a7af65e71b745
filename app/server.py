"""The Quart app factory and the Hypercorn runner.

Everything a request handler needs lives on one `Services` object created here and reached through
`services()`; there are no module-level globals, so tests can build as many apps as they like.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from dataclasses import dataclass, field
from functools import partial

from quart import Quart, current_app

from app.api import api
from app.call import Call
from app.health import health
from app.registry import MemoryRegistry, RegistryError
from app.settings import Settings
from app.softphone import softphone
from app.transports.browser import browser_ws
from app.transports.twilio import telephone
from app.transports.webrtc import webrtc
from app.turns import TurnConfig
from app.vad import VadBatcher, load_vad
from bots.base import CallInfo
from bots.loader import BotFactory, load_bot
from codec import SUPPORTED_RATES, Resampler

log = logging.getLogger("callbridge")


class ServiceUnavailable(RegistryError):
    """New calls are refused while the service starts or drains."""

    code = "service_unavailable"


@dataclass
class Services:
    """What the request handlers share: settings, the registry, the VAD model, the bot factory."""

    settings: Settings
    bot_factory: BotFactory
    registry: MemoryRegistry
    vad: VadBatcher | None = None
    draining: bool = False
    calls: dict[str, Call] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.vad is not None and not self.draining

    def open_call(
        self, call_id: str, transport: str, *, inbound_rate: int, outbound_rate: int,
        parameters: dict[str, str] | None = None,
    ) -> Call:
        """Claim a registry slot and build the call's runtime; raises a RegistryError when refused."""
        if not self.ready or self.vad is None:
            raise ServiceUnavailable("the service is not accepting calls right now")
        session = self.registry.open(call_id, transport)
        try:
            bot = self.bot_factory(CallInfo(call_id=call_id, transport=transport, parameters=parameters or {}))
        except Exception:
            self.registry.close(call_id)
            raise
        call = Call(
            session, bot, self.vad, inbound_rate=inbound_rate, outbound_rate=outbound_rate,
            turn_config=partial(TurnConfig.from_settings, self.settings), barge_in=self.settings.barge_in,
            input_timeout=self.settings.input_timeout_seconds,
        )
        self.calls[call_id] = call
        log.info("call %s started on %s", call_id, transport)
        return call

    async def end_call(self, call: Call) -> None:
        """Stop the bot and free the call's slot; safe to call more than once."""
        await call.close()
        if self.calls.pop(call.id, None) is not None:
            self.registry.close(call.id)
            log.info("call %s ended: %d turns, %d barge-ins", call.id, call.stats.turns, call.stats.barge_ins)


def services() -> Services:
    """The Services of the app handling the current request."""
    return current_app.extensions["callbridge"]


def create_app(settings: Settings) -> Quart:
    app = Quart(__name__)
    state = Services(
        settings=settings, bot_factory=load_bot(settings.bot), registry=MemoryRegistry(settings.concurrency_limit)
    )
    app.extensions["callbridge"] = state
    app.register_blueprint(health)
    app.register_blueprint(api)
    app.register_blueprint(telephone)
    app.register_blueprint(browser_ws)
    # The WebRTC blueprint closes its peer connections at shutdown, before the calls below are ended.
    app.register_blueprint(webrtc)
    app.register_blueprint(softphone)

    @app.before_serving
    async def _start() -> None:
        await asyncio.to_thread(prepare_resamplers)
        state.vad = VadBatcher(await asyncio.to_thread(load_vad, settings.vad_backend))
        log.info("ready: bot=%s vad=%s limit=%d", settings.bot, settings.vad_backend, settings.concurrency_limit)

    @app.after_serving
    async def _stop() -> None:
        for call in list(state.calls.values()):
            await state.end_call(call)
        if state.vad is not None:
            await state.vad.close()

    return app


def prepare_resamplers() -> None:
    """Design every resampling filter at start-up: scipy.signal takes ~1.5 s to import, never mid-call."""
    for source, target in itertools.permutations(SUPPORTED_RATES, 2):
        Resampler(source, target)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(settings: Settings) -> None:
    """Serve the app on Hypercorn until SIGTERM or SIGINT, then shut down gracefully."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, printed once
    config.graceful_timeout = settings.shutdown_grace_seconds
    # A hard cap well above MAX_MESSAGE_BYTES; the transports enforce the setting with a clear error.
    config.websocket_max_message_size = settings.max_message_bytes * 4
    app = create_app(settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop, app)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    log.info("stopped")


def _on_signal(sig: signal.Signals, stop: asyncio.Event, app: Quart) -> None:
    log.info("%s received: shutting down", sig.name)
    app.extensions["callbridge"].draining = True
    stop.set()
