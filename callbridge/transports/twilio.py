"""Twilio Media Streams: the TwiML webhook and the call's WebSocket.

`POST /telephone/incoming` answers Twilio's webhook with `<Connect><Stream>` pointing at
`/telephone/handler`, passing From, To and a per-call token as `<Parameter>`s (Twilio rejects query
strings in the Stream URL). The token is an HMAC of the CallSid, so any replica can check it in
`start` without shared state. On the socket only Twilio's own messages are sent: `media`, `mark`
(the reply id, echoed back once the caller has heard the reply, or on `clear`) and `clear`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Response, request
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from callbridge.core.call import Call
from callbridge.core.messages import ClientMessage
from callbridge.edge.websocket import WebSocket
from callbridge.sessions.shared import SharedRegistryUnavailable
from callbridge.transports.media import INVALID_PAYLOAD, POLICY_VIOLATION, MediaSocket, ProtocolError, field

logger = logging.getLogger("callbridge.twilio")

telephone = Blueprint("telephone", __name__)

HANDLER_PATH = "/telephone/handler"
RATE = 8000


def _services() -> Any:
    from callbridge.serve import services

    return services()


def token_secret(settings: Any, _fallback: bytes = secrets.token_bytes(32)) -> bytes:
    """CALL_TOKEN_SECRET, else TWILIO_AUTH_TOKEN, else a per-process secret (fine for one replica)."""
    secret = settings.call_token_secret or settings.twilio_auth_token
    return secret.encode() if secret else _fallback


def call_token(secret: bytes, call_sid: str) -> str:
    return hmac.new(secret, call_sid.encode(), hashlib.sha256).hexdigest()[:32]


def public_base(settings: Any, scheme: str, host: str) -> str:
    """The public https base: PUBLIC_URL when set, else what this request was addressed to."""
    return settings.public_url or f"{scheme}://{host}"


def stream_url(base: str) -> str:
    """The wss:// URL of the stream handler under a public base URL."""
    parts = urlsplit(base)
    return f"{'ws' if parts.scheme == 'http' else 'wss'}://{parts.netloc}{HANDLER_PATH}"


def signature_valid(settings: Any, url: str, params: dict[str, str], headers: Any) -> bool:
    token = settings.twilio_auth_token
    if not token:
        return True
    signature = headers.get("x-twilio-signature", "")
    return bool(signature) and RequestValidator(token).validate(url, params, signature)


async def _refusal(state: Any) -> str:
    """Why a new call would be refused now, or "" when it would be taken (a refusal at capacity is counted
    in the metrics)."""
    if not state.ready:
        return "draining" if state.draining else "starting"
    try:
        calls = await state.count()
    except SharedRegistryUnavailable as exc:
        return str(exc)
    if calls >= state.registry.limit:
        state.metrics.rejections.inc()
        return f"at capacity ({calls} calls, CONCURRENCY_LIMIT={state.registry.limit})"
    return ""


@telephone.post("/telephone/incoming")
async def incoming() -> Response | tuple[str, int]:
    state = _services()
    form = {key: value for key, value in (await request.form).items()}
    base = public_base(state.settings, request.scheme, request.host)
    query = f"?{request.query_string.decode()}" if request.query_string else ""
    if not signature_valid(state.settings, base + request.path + query, form, request.headers):
        state.metrics.errors.labels("signature").inc()
        logger.warning("webhook refused: bad or missing X-Twilio-Signature (from %s)", request.remote_addr)
        return "invalid Twilio signature", 403
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return "CallSid is required", 422
    response = VoiceResponse()
    refusal = await _refusal(state)
    if refusal:
        logger.warning("webhook for %s rejected: %s", call_sid, refusal)
        response.reject(reason="busy")
        return Response(str(response), mimetype="text/xml")
    if state.settings.greeting:
        response.say(state.settings.greeting)
    stream = Stream(url=stream_url(base))
    stream.parameter(name="token", value=call_token(token_secret(state.settings), call_sid))
    for name in ("From", "To"):
        if form.get(name):
            stream.parameter(name=name, value=form[name])
    connect = Connect()
    connect.append(stream)
    response.append(connect)
    logger.info("webhook: call %s from %s to %s", call_sid, form.get("From", "?"), form.get("To", "?"))
    return Response(str(response), mimetype="text/xml")


async def handler(state: Any, ws: WebSocket) -> None:
    """WS /telephone/handler (routed by callbridge.edge.server): check the upgrade's signature, then run."""
    base = public_base(state.settings, "https" if ws.scheme == "wss" else "http", ws.host)
    if not signature_valid(state.settings, stream_url(base), {}, ws.headers):
        state.metrics.errors.labels("signature").inc()
        logger.warning("stream refused: bad or missing X-Twilio-Signature")
        await ws.close(POLICY_VIOLATION, "invalid Twilio signature")
        return
    await TwilioStream(state, ws).run()


class TwilioStream(MediaSocket):
    """One Media Streams socket. Only Twilio's own messages go out on it; client messages are logged."""

    name = "twilio stream"

    def __init__(self, state: Any, ws: WebSocket) -> None:
        super().__init__(state, ws)
        self._sid_json = '""'

    async def handshake(self) -> Call:
        while True:
            message = await self.receive()
            event = message["event"]
            if event == "connected":
                continue
            if event != "start":
                raise ProtocolError(f"{event!r} before start")
            self.label = field(message, "start", "streamSid")
            self._sid_json = json.dumps(self.label)
            call_sid = field(message, "start", "callSid")
            params = message["start"].get("customParameters") or {}
            if not isinstance(params, dict):
                raise ProtocolError("start.customParameters must be an object", INVALID_PAYLOAD)
            media_format = message["start"].get("mediaFormat") or {}
            encoding, rate = media_format.get("encoding", "audio/x-mulaw"), str(media_format.get("sampleRate", RATE))
            if encoding != "audio/x-mulaw" or rate != str(RATE):
                raise ProtocolError(f"unsupported mediaFormat {media_format}", INVALID_PAYLOAD)
            expected = call_token(token_secret(self.settings), call_sid)
            if not hmac.compare_digest(str(params.get("token", "")), expected):
                raise ProtocolError("invalid or missing call token (start the call through /telephone/incoming)")
            parameters = {str(k): str(v) for k, v in params.items() if k != "token"}
            parameters["CallSid"] = call_sid
            return await self.state.open_call(
                self.label, "twilio", inbound_rate=RATE, outbound_rate=RATE, parameters=parameters
            )

    async def on_event(self, call: Call, event: str, message: dict[str, Any]) -> None:
        if event == "mark":
            call.playback_finished(field(message, "mark", "name"))
        elif event == "dtmf":
            call.push_dtmf(field(message, "dtmf", "digit"))
        else:
            await super().on_event(call, event, message)

    async def send_media(self, payload: str) -> None:
        await self.ws.send(f'{{"event":"media","streamSid":{self._sid_json},"media":{{"payload":"{payload}"}}}}')

    async def send_clear(self) -> None:
        await self.ws.send(f'{{"event":"clear","streamSid":{self._sid_json}}}')

    async def reply_end(self, reply_id: str, play_end: float) -> None:
        await self.ws.send(json.dumps({"event": "mark", "streamSid": self.label, "mark": {"name": reply_id}}))

    async def send_message(self, message: ClientMessage) -> None:
        logger.debug("twilio stream %s: %s %s", self.label, message.type, message.data)
