"""Serving one process: Services built once, the Quart app behind the edge, signals drained.

The edge listens on HOST:PORT and serves the media sockets; Hypercorn serves the Quart app on a private
Unix socket behind it (callbridge.edge.server). SIGTERM drains (new calls refused, calls in progress finish
within SHUTDOWN_GRACE_SECONDS, then the bot says goodbye), gives HTTP requests still open
HTTP_GRACE_SECONDS, and exits; a second signal stops at once. With WORKERS > 1 this is one of several processes
sharing the port (callbridge.workers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable

from callbridge.bots.loader import BotFactory, load_bot
from callbridge.edge.media import media_routes
from callbridge.edge.server import BACKLOG, ClientAddress, Edge
from callbridge.services import Services
from callbridge.sessions.registry import MemoryRegistry, Registry, ServiceUnavailable
from callbridge.settings import Settings
from callbridge.watchdog import LoopWatchdog
from callbridge.web.app import create_app

log = logging.getLogger("callbridge")

#: After SIGTERM, once the calls have drained, how long HTTP requests still open may take to be answered before
#: the edge closes them.
HTTP_GRACE_SECONDS = 5.0


class ServeError(Exception):
    """The service cannot start (e.g. the port is taken); the message says why."""


def make_registry(settings: Settings, worker: int) -> Registry:
    if not settings.redis_url:
        return MemoryRegistry(settings.concurrency_limit)
    from callbridge.sessions.shared import RedisRegistry

    # One replica = one host and port: two services on one machine sharing a Redis keep their own calls,
    # limits and worker names apart (Kubernetes pods differ by host name, the port is the same).
    replica = f"{socket.gethostname()}:{settings.port}"
    return RedisRegistry(settings.redis_url, replica, f"{replica}/{worker}", settings.concurrency_limit)


def make_services(settings: Settings, bot_factory: BotFactory | None = None, worker: int = 0) -> Services:
    """The process's Services; `worker` numbers this process among WORKERS (it names the process in Redis)."""
    bot_factory = bot_factory or load_bot(settings.bot, settings.bot_path)
    return Services(settings=settings, bot_factory=bot_factory, registry=make_registry(settings, worker))


def raise_open_file_limit() -> None:
    """Open files (sockets) up to the hard limit: each HTTP request in flight holds three (the client's, both
    ends of Hypercorn's socket), and a soft limit of 1024 (systemd's default) refuses a burst of a few hundred.
    The soft limit stays low by default only for programs that use select(); the event loops here use epoll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(settings: Settings, bot_factory: BotFactory | None = None, worker: int = 0,
                on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM; `on_ready` is called once the public port is open (the models loaded, Redis
    reached): a supervisor tells a worker that served from one that could not start by it."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    raise_open_file_limit()
    services = make_services(settings, bot_factory, worker)
    app = create_app(services)
    app.asgi_app = ClientAddress(app.asgi_app)  # type: ignore[method-assign]
    try:
        await services.registry.start()
    except ServiceUnavailable as exc:
        raise ServeError(str(exc)) from None
    private = tempfile.mkdtemp(prefix="callbridge-")  # mode 0700: only this user reaches Hypercorn
    upstream = os.path.join(private, "http.sock")
    config = Config()
    config.bind = [f"unix:{upstream}"]
    config.backlog = BACKLOG  # a burst the edge accepts waits here for Hypercorn to take it
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, printed once
    # Calls have drained and the edge has closed every connection by the time Hypercorn is asked to stop.
    config.graceful_timeout = HTTP_GRACE_SECONDS
    edge = Edge(media_routes(services), upstream, max_size=settings.max_message_bytes * 4)

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
        drain = asyncio.create_task(services.drain(settings.shutdown_grace_seconds))
        drain.add_done_callback(lambda _: stop.set())

    watchdog = LoopWatchdog(settings.loop_lag_warning_ms / 1000) if settings.loop_lag_warning_ms else None
    if watchdog is not None:
        watchdog.start()
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
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.stop()
        await edge.close(HTTP_GRACE_SECONDS)
        hypercorn_stop.set()
        await http
        await services.registry.stop()
        shutil.rmtree(private, ignore_errors=True)
    log.info("stopped")
