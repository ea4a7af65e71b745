"""The Quart app factory: one blueprint per concern, each handed the process's Services.

The app serves everything but the µ-law media sockets, which the edge serves itself
(callbridge.edge). Before it serves, the VAD model (and the end-of-turn model and STOP_WORDS' Whisper,
if set) is loaded; after, the calls left are ended.
"""

from __future__ import annotations

import asyncio
import logging

from quart import Quart

from callbridge.core.vad import VadBatcher, load_vad
from callbridge.services import Services
from callbridge.web.calls import calls
from callbridge.web.health import health
from callbridge.web.io import io
from callbridge.web.plivo import plivo
from callbridge.web.relay import relay
from callbridge.web.responses import JsonProvider
from callbridge.web.softphone import softphone
from callbridge.web.telephone import telephone
from callbridge.web.telnyx import telnyx
from callbridge.web.vonage import vonage
from callbridge.web.webrtc import webrtc

log = logging.getLogger("callbridge")


def create_app(services: Services) -> Quart:
    settings = services.settings
    app = Quart("callbridge.web")
    app.json = JsonProvider(app)
    app.register_blueprint(health(services))
    app.register_blueprint(io(services))
    app.register_blueprint(telephone(services))
    app.register_blueprint(relay(services))
    app.register_blueprint(vonage(services))
    app.register_blueprint(telnyx(services))
    app.register_blueprint(plivo(services))
    app.register_blueprint(calls(services))
    # Registered before the app's own after_serving below: at shutdown it closes the peer connections still
    # open, then the calls are ended.
    app.register_blueprint(webrtc(services))
    app.register_blueprint(softphone())

    @app.before_serving
    async def load_models() -> None:
        if not settings.public_url:
            log.warning("PUBLIC_URL is not set: Twilio stream URLs are built from each webhook's Host header")
        model = await asyncio.to_thread(load_vad, settings.vad_backend)
        await asyncio.to_thread(services.load_end_of_turn)
        if services.stop_words is not None:
            try:
                await asyncio.to_thread(services.stop_words.load)
            except Exception as exc:  # the model cannot load: say so, stay unready
                services.problem = f"STOP_WORDS cannot work: {exc}"
                log.error("%s", services.problem)
                return
        prepare = getattr(services.bot_factory, "prepare", None)
        if prepare is not None:
            try:
                await prepare()
            except Exception as exc:  # a model missing, a provider URL that cannot work: say so, stay unready
                services.problem = f"BOT={settings.bot} cannot start: {exc}"
                log.error("%s", services.problem)
                return
        services.vad = VadBatcher(model, on_batch=services.metrics.vad_batch, in_thread=settings.vad_in_thread)
        log.info("ready: bot=%s vad=%s (%s) end_of_turn=%s limit=%d", settings.bot, settings.vad_backend,
                 "own thread" if settings.vad_in_thread else "on the event loop", settings.end_of_turn,
                 settings.concurrency_limit)

    @app.after_serving
    async def end_calls() -> None:
        await services.close()

    return app
