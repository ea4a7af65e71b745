"""Plivo's answer URL: `POST /plivo/incoming` answers Plivo XML with a bidirectional `<Stream>` to the call's
media socket, `/plivo/handler` (served by the edge: callbridge.edge.media).

The request must carry a valid X-Plivo-Signature-V3 when PLIVO_AUTH_TOKEN is set. The Stream carries the
per-call token (and the caller's From and To) in `extraHeaders`; `keepCallAlive` holds the call on the stream
until the socket closes, which ends the call. When a new call would be refused (starting, draining, no shared
registry, every slot taken) the answer is `<Hangup reason="busy"/>`, so the caller hears busy instead of silence.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET

from quart import Blueprint, Response, request

from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports import plivo as wire
from callbridge.transports.media import websocket_url
from callbridge.transports.twilio import call_token, token_secret

logger = logging.getLogger("callbridge.plivo")


def _xml(response: ET.Element) -> Response:
    return Response(ET.tostring(response, encoding="unicode", xml_declaration=True), mimetype="text/xml")


def plivo(services: Services) -> Blueprint:
    routes = Blueprint("plivo", __name__)
    settings = services.settings

    @routes.post(wire.WEBHOOK)
    async def incoming() -> Response | tuple[str, int]:
        form = {key: value for key, value in (await request.form).items()}
        base = settings.public_base(request.scheme, request.host)
        query = f"?{request.query_string.decode()}" if request.query_string else ""
        if not wire.signature_valid(settings.plivo_auth_token, base + request.path + query, form, request.headers):
            services.metrics.errors.labels("signature").inc()
            logger.warning("webhook refused: bad or missing X-Plivo-Signature-V3 (from %s)", request.remote_addr)
            return "invalid Plivo signature", 403
        call_uuid = form.get("CallUUID", "")
        if not call_uuid:
            return "CallUUID is required", 422
        response = ET.Element("Response")
        admission = await services.admission()
        if admission.state != "ready":
            if admission.state == "full":
                services.metrics.rejections.inc()
            logger.warning("webhook for %s rejected: %s", call_uuid, admission.reason)
            ET.SubElement(response, "Hangup", reason="busy")
            return _xml(response)
        secret = token_secret(settings.call_token_secret, settings.plivo_auth_token)
        token = call_token(secret, call_uuid, time.time() + settings.call_token_seconds)
        headers = wire.extra_headers({"token": wire.wire_token(token), "From": form.get("From", ""),
                                      "To": form.get("To", "")})
        stream = ET.SubElement(response, "Stream", bidirectional="true", keepCallAlive="true",
                               contentType=wire.CONTENT_TYPE, audioTrack="inbound", extraHeaders=headers)
        stream.text = websocket_url(base, wire.PATH)
        shown = str if logger.isEnabledFor(logging.DEBUG) else masked_number  # numbers in full at DEBUG only
        logger.info("webhook: plivo call %s from %s to %s", call_uuid, shown(form.get("From", "?")),
                    shown(form.get("To", "?")))
        return _xml(response)

    return routes
