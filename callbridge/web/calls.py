"""The outbound-call API: `POST /calls` has Twilio dial a number and connect the answered call to the bot.

`{"to": "+15550100", "from": "+15550199", "parameters": {"name": "value"}, "machine_detection": "Enable"}`
with `Authorization: Bearer $API_TOKEN` -> 201 `{"call_sid": "CA..."}`. Only `to` is required; `from` defaults
to TWILIO_FROM_NUMBER. Twilio is given the Url `/telephone/outbound` (callbridge.web.telephone), which it asks
for TwiML once the callee answers: the call then gets the same stream, token and bot an incoming call gets,
and the bot is told it is outbound (and, with `machine_detection`, what answered). The call takes its slot of
CONCURRENCY_LIMIT when its stream starts, as an incoming call does; a call placed while every slot is taken
is refused here (429) rather than hung up on once answered.

Off (404) while API_TOKEN is unset; 503 while Twilio's REST credentials, PUBLIC_URL or a From number are
missing. Every refusal is the contract's `{"status": "failed", "meta": {"error": ...}}`.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from quart import Blueprint, request

from callbridge.bots.base import E164
from callbridge.logs import masked_number
from callbridge.services import Services
from callbridge.transports.twilio_rest import MACHINE_DETECTION, TwilioRestError
from callbridge.web.responses import failure
from callbridge.web.telephone import RESERVED_PARAMETERS

logger = logging.getLogger("callbridge.calls")

#: A request body is a few hundred bytes; a bigger one is refused before it is read whole.
MAX_BODY_BYTES = 8 * 1024
#: The bot's parameters travel in the answer Url's query string, which Twilio caps (4,000 characters in all).
MAX_PARAMETERS_CHARS = 2048
_PARAMETER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_FIELDS = frozenset({"to", "from", "parameters", "machine_detection"})

Refusal = tuple[dict[str, Any], int]


@dataclass(frozen=True)
class Order:
    """What a valid POST /calls body asks for."""

    to: str
    from_: str
    parameters: dict[str, str]
    machine_detection: str


def calls(services: Services) -> Blueprint:
    routes = Blueprint("calls", __name__)
    settings = services.settings

    @routes.post("/calls")
    async def place_call() -> Refusal | tuple[dict[str, Any], int, dict[str, str]]:
        if not settings.api_token:
            return failure(404, "outbound calls are off: set API_TOKEN to enable POST /calls")
        if not _bearer_matches(request.headers.get("Authorization", ""), settings.api_token):
            refusal, status = failure(401, "a valid Authorization: Bearer <API_TOKEN> header is required")
            return refusal, status, {"WWW-Authenticate": "Bearer"}
        body = await _json_body()
        if isinstance(body, tuple):
            return body
        order = _read_order(body, settings.twilio_from_number)
        if not isinstance(order, Order):
            return order
        rest = services.twilio_rest
        if rest is None:
            return failure(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if not settings.public_url:
            return failure(503, "outbound calls need PUBLIC_URL: Twilio asks it for the call's TwiML once answered")
        admission = await services.admission()
        if admission.state == "full":
            services.metrics.rejections.inc()
            return failure(429, "concurrency_limit_reached", limit=services.registry.limit)
        if admission.state != "ready":
            return failure(503, f"not taking calls now: {admission.reason}")
        answer_url = f"{settings.public_url}/telephone/outbound"
        if order.parameters:
            answer_url += "?" + urlencode(order.parameters)
        try:
            call_sid = await rest.place_call(order.to, order.from_, answer_url, order.machine_detection)
        except TwilioRestError as exc:
            services.metrics.errors.labels("twilio_rest").inc()
            logger.warning("outbound call to %s not placed: %s", masked_number(order.to), exc,
                           extra={"event": "outbound_failed", "error": str(exc)})
            status = 502 if exc.status is not None else 504
            return failure(status, "twilio_error", message=str(exc), twilio_status=exc.status)
        logger.info("outbound call %s to %s placed", call_sid, masked_number(order.to),
                    extra={"event": "outbound_call", "call_id": call_sid})
        return {"call_sid": call_sid}, 201

    return routes


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _json_body() -> dict[str, Any] | Refusal:
    """The request's JSON object, read up to MAX_BODY_BYTES (a chunked body is counted as it arrives)."""
    if request.mimetype != "application/json":
        return failure(415, f"the body must be JSON sent as Content-Type: application/json, not "
                            f"{request.mimetype or 'no Content-Type'}")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return failure(413, f"the body may be at most {MAX_BODY_BYTES} bytes")
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            return failure(413, f"the body may be at most {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(data)  # as the app's JSON (callbridge.web.responses): deep nesting is a ValueError
    except ValueError:
        return failure(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return failure(422, "the body must be a JSON object")
    return body


def _read_order(body: dict[str, Any], default_from: str) -> Order | Refusal:
    """The order in the body, or the 422 that says what is wrong with it."""
    if unknown := sorted(set(body) - _FIELDS):
        return failure(422, f"unknown fields {unknown}: the body takes {sorted(_FIELDS)}")
    to, from_ = body.get("to"), body.get("from", default_from)
    if not isinstance(to, str) or not E164.fullmatch(to):
        return failure(422, '"to" must be an E.164 phone number such as "+15550100"')
    if not from_:
        return failure(422, '"from" is required when TWILIO_FROM_NUMBER is not set')
    if not isinstance(from_, str) or not E164.fullmatch(from_):
        return failure(422, '"from" must be an E.164 phone number such as "+15550100"')
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
        return failure(422, '"parameters" must be an object of strings')
    for name in parameters:
        if not _PARAMETER_NAME.fullmatch(name) or name in RESERVED_PARAMETERS:
            return failure(422, f"parameter name {name!r}: letters, digits and _ (at most 64), not one of "
                                f"{sorted(RESERVED_PARAMETERS)}")
    if len(urlencode(parameters)) > MAX_PARAMETERS_CHARS:
        return failure(422, f'"parameters" may take at most {MAX_PARAMETERS_CHARS} characters, URL-encoded')
    machine_detection = body.get("machine_detection", "")
    if machine_detection not in ("", *MACHINE_DETECTION):
        return failure(422, f'"machine_detection" must be one of {list(MACHINE_DETECTION)}')
    return Order(to, from_, parameters, machine_detection)
