"""Vonage's answer webhook: `GET` or `POST /vonage/answer` answers an NCCO connecting the call to its socket.

The NCCO's websocket endpoint points at `/vonage/handler` (served by the edge: callbridge.edge.media) with
`audio/l16;rate=16000` and, as its `headers`, a per-call token bound to the call's uuid, the uuid, From and
To: Vonage hands them over in the socket's first message (callbridge.transports.vonage). With
VONAGE_SIGNATURE_SECRET set, the webhook must carry Vonage's signed JWT, else 403. When a new call would be
refused (starting, draining, every slot taken) the answer is an empty NCCO: Vonage then ends the call at once
instead of connecting it to a socket that would be refused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from quart import Blueprint, Response, jsonify, request

from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports.media import websocket_url
from callbridge.transports.twilio import call_token, token_secret
from callbridge.transports.vonage import ANSWER_PATH, PATH, ncco, query_payload, signature_refusal

logger = logging.getLogger("callbridge.vonage")


def vonage(services: Services) -> Blueprint:
    routes = Blueprint("vonage", __name__)
    settings = services.settings

    @routes.route(ANSWER_PATH, methods=["GET", "POST"])
    async def answer() -> Response | tuple[str, int]:
        if request.method == "POST":
            payload = await request.get_data(as_text=False)
            body = await request.get_json(force=True, silent=True)
            params: dict[str, Any] = body if isinstance(body, dict) else {}
        else:
            payload = query_payload(list(request.args.items(multi=True)))
            params = dict(request.args)
        refusal = signature_refusal(settings.vonage_signature_secret, request.headers.get("Authorization", ""),
                                    payload, time.time())
        if refusal is not None:
            services.metrics.errors.labels("signature").inc()
            logger.warning("Vonage webhook refused: %s (from %s)", refusal, request.remote_addr)
            return "invalid Vonage signature", 403
        uuid = params.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            return "uuid is required", 422
        admission = await services.admission()
        if admission.state != "ready":
            if admission.state == "full":
                services.metrics.rejections.inc()
            logger.warning("Vonage webhook for %s rejected: %s", uuid, admission.reason)
            return jsonify([])
        secret = token_secret(settings.call_token_secret, settings.vonage_signature_secret)
        headers = {"token": call_token(secret, uuid, time.time() + settings.call_token_seconds), "uuid": uuid}
        for name, key in (("From", "from"), ("To", "to")):
            if isinstance(params.get(key), str) and params[key]:
                headers[name] = params[key]
        base = settings.public_base(request.scheme, request.host)
        shown = str if logger.isEnabledFor(logging.DEBUG) else masked_number  # numbers in full at DEBUG only
        logger.info("Vonage webhook: call %s from %s to %s", uuid, shown(str(params.get("from", "?"))),
                    shown(str(params.get("to", "?"))))
        return jsonify(ncco(websocket_url(base, PATH), headers))

    return routes
