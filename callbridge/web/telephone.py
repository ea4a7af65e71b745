"""The Twilio webhooks: `POST /telephone/incoming` answers `<Connect><Stream>` to the call's media socket.

The stream URL points at `/telephone/handler` (served by the edge: callbridge.edge.media) and carries From,
To and a per-call token as `<Parameter>`s: Twilio rejects query strings in the Stream URL. The token opens
one stream, within CALL_TOKEN_SECONDS (callbridge.transports.twilio). When a new call
would be refused (starting, draining, no shared registry, every slot taken) the answer is `<Reject
reason="busy"/>`, so the caller hears busy instead of silence.

`POST /telephone/outbound` is the Url Twilio asks once a call placed by `POST /calls` (callbridge.web.calls) is
answered: the same stream, its `<Parameter>`s saying the call is outbound, what answered it (`AnsweredBy`, with
machine detection) and the bot's parameters, which the Url's query string carries (signed by Twilio with it).
Refused then, the call gets `<Hangup/>` (`<Reject>` is for incoming calls only). The token is made here, not
when the call is placed: it is an HMAC of the CallSid, which Twilio assigns when it takes the call.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports.media import websocket_url
from callbridge.transports.twilio import PATH, call_token, signature_valid, token_secret

logger = logging.getLogger("callbridge.twilio")

#: Stream parameters the service sets itself; a bot parameter of POST /calls may not take one of these names.
RESERVED_PARAMETERS = frozenset({"token", "From", "To", "CallSid", "Direction", "AnsweredBy"})


async def signed_call_form(services: Services, webhook: str, log: logging.Logger) -> dict[str, str] | tuple[str, int]:
    """The form of a Twilio call webhook (this request), or the refusal to answer it with: 403 unless Twilio
    signed it (with TWILIO_AUTH_TOKEN set), 422 without a CallSid."""
    form = {key: value for key, value in (await request.form).items()}
    base = services.settings.public_base(request.scheme, request.host)
    query = f"?{request.query_string.decode()}" if request.query_string else ""
    if not signature_valid(services.settings.twilio_auth_token, base + request.path + query, form, request.headers):
        services.metrics.errors.labels("signature").inc()
        log.warning("%s refused: bad or missing X-Twilio-Signature (from %s)", webhook, request.remote_addr)
        return "invalid Twilio signature", 403
    if not form.get("CallSid"):
        return "CallSid is required", 422
    return form


def telephone(services: Services) -> Blueprint:
    routes = Blueprint("telephone", __name__)
    settings = services.settings

    @routes.post("/telephone/incoming")
    async def incoming() -> Response | tuple[str, int]:
        return await answer("inbound")

    @routes.post("/telephone/outbound")
    async def outbound() -> Response | tuple[str, int]:
        return await answer("outbound")

    async def answer(direction: Literal["inbound", "outbound"]) -> Response | tuple[str, int]:
        form = await signed_call_form(services, "webhook", logger)
        if isinstance(form, tuple):
            return form
        call_sid = form["CallSid"]
        base = settings.public_base(request.scheme, request.host)
        response = VoiceResponse()
        admission = await services.admission()
        if admission.state != "ready":
            if admission.state == "full":
                services.metrics.rejections.inc()
            logger.warning("webhook for %s rejected: %s", call_sid, admission.reason)
            if direction == "inbound":
                response.reject(reason="busy")
            else:
                response.hangup()
            return Response(str(response), mimetype="text/xml")
        stream = Stream(url=websocket_url(base, PATH))
        secret = token_secret(settings.call_token_secret, settings.twilio_auth_token)
        stream.parameter(name="token", value=call_token(secret, call_sid, time.time() + settings.call_token_seconds))
        for name in ("From", "To"):
            if form.get(name):
                stream.parameter(name=name, value=form[name])
        if direction == "outbound":
            stream.parameter(name="Direction", value="outbound")
            if form.get("AnsweredBy"):
                stream.parameter(name="AnsweredBy", value=form["AnsweredBy"])
            for name, value in request.args.items():
                if name not in RESERVED_PARAMETERS:
                    stream.parameter(name=name, value=value)
        connect = Connect()
        connect.append(stream)
        response.append(connect)
        shown = str if logger.isEnabledFor(logging.DEBUG) else masked_number  # numbers in full at DEBUG only
        logger.info("webhook: %s call %s from %s to %s", direction, call_sid, shown(form.get("From", "?")),
                    shown(form.get("To", "?")))
        return Response(str(response), mimetype="text/xml")

    return routes
