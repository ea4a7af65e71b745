"""The ConversationRelay webhook: `POST /relay/incoming` answers `<Connect><ConversationRelay>`.

Twilio then transcribes the caller, opens `/relay/handler` (served by the edge: callbridge.edge.relay) and speaks
the text the assistant's brain streams back. The TwiML sets the welcome greeting (the assistant's: GREETING, or
its dialog file's), RELAY_LANGUAGE and RELAY_VOICE, turns on DTMF detection (keys reach the brain as on a Twilio
stream) and carries From, To and a per-call token as `<Parameter>`s, which arrive in `setup`. As on
`/telephone/incoming`: the X-Twilio-Signature is checked when TWILIO_AUTH_TOKEN is set, and a call the service
would refuse (starting, draining, every slot of the one CONCURRENCY_LIMIT taken) gets `<Reject reason="busy"/>`.
"""

from __future__ import annotations

import logging
import time

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import Connect, VoiceResponse

from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports.media import websocket_url
from callbridge.transports.relay import PATH, WEBHOOK
from callbridge.transports.twilio import call_token, token_secret
from callbridge.web.telephone import signed_call_form

logger = logging.getLogger("callbridge.relay")


def relay(services: Services) -> Blueprint:
    routes = Blueprint("relay", __name__)
    settings = services.settings

    @routes.post(WEBHOOK)
    async def incoming() -> Response | tuple[str, int]:
        form = await signed_call_form(services, "relay webhook", logger)
        if isinstance(form, tuple):
            return form
        call_sid = form["CallSid"]
        base = settings.public_base(request.scheme, request.host)
        from callbridge.bots.assistant.conversation import assistant_stages  # here: other bots never start with it

        stages = assistant_stages(services.bot_factory)
        if stages is None:
            logger.error("relay webhook for %s: ConversationRelay needs BOT=assistant, not %s", call_sid, settings.bot)
            return "ConversationRelay needs BOT=assistant", 503
        response = VoiceResponse()
        admission = await services.admission()
        if admission.state != "ready":
            if admission.state == "full":
                services.metrics.rejections.inc()
            logger.warning("relay webhook for %s rejected: %s", call_sid, admission.reason)
            response.reject(reason="busy")
            return Response(str(response), mimetype="text/xml")
        connect = Connect()
        session = connect.conversation_relay(
            url=websocket_url(base, PATH), welcome_greeting=stages.greeting, language=settings.relay_language,
            voice=settings.relay_voice or None, dtmf_detection=True,
        )
        secret = token_secret(settings.call_token_secret, settings.twilio_auth_token)
        session.parameter(name="token", value=call_token(secret, call_sid, time.time() + settings.call_token_seconds))
        for name in ("From", "To"):
            if form.get(name):
                session.parameter(name=name, value=form[name])
        response.append(connect)
        shown = str if logger.isEnabledFor(logging.DEBUG) else masked_number  # numbers in full at DEBUG only
        logger.info("relay webhook: call %s from %s to %s", call_sid, shown(form.get("From", "?")),
                    shown(form.get("To", "?")))
        return Response(str(response), mimetype="text/xml")

    return routes
