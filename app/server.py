"""The Quart app factory and the Hypercorn runner.

Everything a request handler needs lives on one `Services` object created here and reached through
`services()`; there are no module-level globals, so tests can build as many apps as they like.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from quart import Quart, current_app

from app.health import health
from app.settings import Settings

log = logging.getLogger("callbridge")


@dataclass
class Services:
    """What the request handlers share: settings, and the state of the process."""

    settings: Settings
    ready: bool = False
    draining: bool = False
    background: set[asyncio.Task] = field(default_factory=set)


def services() -> Services:
    """The Services of the app handling the current request."""
    return current_app.extensions["callbridge"]


def create_app(settings: Settings) -> Quart:
    app = Quart(__name__)
    state = Services(settings=settings)
    app.extensions["callbridge"] = state
    app.register_blueprint(health)

    @app.before_serving
    async def _start() -> None:
        state.ready = True
        log.info("ready: bot=%s limit=%d", settings.bot, settings.concurrency_limit)

    @app.after_serving
    async def _stop() -> None:
        state.ready = False

    return app


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(settings: Settings) -> None:
    """Serve the app on Hypercorn until SIGTERM or SIGINT, then shut down gracefully."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.graceful_timeout = settings.shutdown_grace_seconds
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
