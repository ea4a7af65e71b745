"""The Telnyx webhook: `POST /telnyx/incoming` answers TeXML `<Connect><Stream>` to the call's media socket.

A TeXML application POSTs its form-encoded call fields (CallSid, From, To, ...) here, signed with Ed25519
(callbridge.transports.telnyx.signature_refusal; checked when TELNYX_PUBLIC_KEY is set, else 403). The answer's
Stream points at `/telnyx/handler` (served by the edge: callbridge.edge.media) and asks for a bidirectional RTP
stream in PCMU both ways (`codec`, `bidirectionalMode`, `bidirectionalCodec`), so the socket carries what the
Twilio one does: µ-law at 8 kHz. From, To and the per-call token go as `<Parameter>`s, which arrive in the
stream's `start.custom_parameters`. TeXML is TwiML-compatible, so the twilio package's builder writes it. A call
that would be refused now (starting, draining, every slot taken: the one limit over every transport) gets
`<Reject reason="busy"/>`.
"""

from __future__ import annotations

import logging
import time

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports.media import websocket_url
from callbridge.transports.telnyx import PATH, signature_refusal
from callbridge.transports.twilio import call_token, token_secret

logger = logging.getLogger("callbridge.telnyx")


def telnyx(services: Services) -> Blueprint:
    routes = Blueprint("telnyx", __name__)
    settings = services.settings

    @routes.post("/telnyx/incoming")
    async def incoming() -> Response | tuple[str, int]:
        body = await request.get_data(as_text=False)
        refusal = signature_refusal(settings.telnyx_public_key, body, request.headers, time.time())
        if refusal is not None:
            services.metrics.errors.labels("signature").inc()
            logger.warning("Telnyx webhook refused: %s (from %s)", refusal, request.remote_addr)
            return "invalid Telnyx signature", 403
        form = {key: value for key, value in (await request.form).items()}
        call_sid = form.get("CallSid", "")
        if not call_sid:
            return "CallSid is required", 422
        response = VoiceResponse()
        admission = await services.admission()
        if admission.state != "ready":
            if admission.state == "full":
                services.metrics.rejections.inc()
            logger.warning("Telnyx webhook for %s rejected: %s", call_sid, admission.reason)
            response.reject(reason="busy")
            return Response(str(response), mimetype="text/xml")
        base = settings.public_base(request.scheme, request.host)
        stream = Stream(url=websocket_url(base, PATH), codec="PCMU", bidirectional_mode="rtp",
                        bidirectional_codec="PCMU")
        secret = token_secret(settings.call_token_secret, settings.twilio_auth_token)
        stream.parameter(name="token", value=call_token(secret, call_sid, time.time() + settings.call_token_seconds))
        for name in ("From", "To"):
            if form.get(name):
                stream.parameter(name=name, value=form[name])
        connect = Connect()
        connect.append(stream)
        response.append(connect)
        shown = str if logger.isEnabledFor(logging.DEBUG) else masked_number
        logger.info("Telnyx webhook: call %s from %s to %s", call_sid, shown(form.get("From", "?")),
                    shown(form.get("To", "?")))
        return Response(str(response), mimetype="text/xml")

    return routes
