"""Twilio ConversationRelay, sans-I/O: the session's messages as events, and what goes back on it.

ConversationRelay does the speech itself (its STT hears the caller, its TTS speaks our text), so this socket
carries text only, as JSON objects named by `type`. Inbound: `setup` (sessionId, callSid, from, to,
customParameters with the per-call token), `prompt` (voicePrompt, lang, last), `interrupt`
(utteranceUntilInterrupt: what the caller heard of our reply before speaking over it, durationUntilInterruptMs),
`dtmf` (digit) and `error` (description: Twilio could not use something we sent). Outbound: `text` tokens
(`last` ends a reply) and `end` (handoffData: Twilio ends the session and hands that string to `<Connect
action>`).

The per-call token works as on Media Streams (callbridge.transports.twilio): made by the webhook
(`POST /relay/incoming`) as a `<Parameter>`, it arrives in `setup` and opens one session. It is not put in the
socket URL's query string: the `<Parameter>` path is the one the Twilio stream already uses, and it keeps the
token out of access logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from callbridge.transports.media import (
    INVALID_PAYLOAD,
    Dtmf,
    ProtocolError,
    Start,
    field_of,
    parse_message,
)
from callbridge.transports.twilio import token_valid_for

PATH = "/relay/handler"
WEBHOOK = "/relay/incoming"


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the caller said, as ConversationRelay's speech-to-text heard it."""

    text: str
    lang: str = ""


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The caller spoke over our reply after hearing `heard` of it (`heard_ms` of speech)."""

    heard: str
    heard_ms: int


@dataclass(frozen=True, slots=True)
class Reported:
    """Twilio reports a problem with the session or with a message we sent."""

    description: str


RelayEvent = Start | Prompt | Interrupt | Dtmf | Reported


class RelayProtocol:
    transport = "relay"

    def __init__(self, secret: bytes, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_bytes = max_bytes
        self.clock = clock  # Unix time: tokens are made by whichever replica took the webhook
        self.session_id = ""

    def receive(self, raw: str | bytes) -> RelayEvent | None:
        """The event in one message (None: nothing to do); raises ProtocolError."""
        message = parse_message(raw, self.max_bytes, kind="type")
        kind = message["type"]
        if not self.session_id:
            if kind != "setup":
                raise ProtocolError(f"{kind!r} before setup")
            return self._setup(message)
        if kind == "prompt":
            text = field_of(message, "voicePrompt")
            last = message.get("last", True)
            if not isinstance(last, bool):
                raise ProtocolError("prompt.last must be a boolean", INVALID_PAYLOAD)
            # Partial prompts come only with partialPrompts="true", which our TwiML never sets; the last one holds
            # the whole utterance.
            return Prompt(text, str(message.get("lang") or "")) if last else None
        if kind == "interrupt":
            return Interrupt(field_of(message, "utteranceUntilInterrupt"), self._milliseconds(message))
        if kind == "dtmf":
            return Dtmf(field_of(message, "digit"))
        if kind == "error":
            return Reported(str(message.get("description", "")))
        if kind == "setup":
            raise ProtocolError("unexpected 'setup' after setup")
        raise ProtocolError(f"unknown message type {kind!r}", INVALID_PAYLOAD)

    def _setup(self, message: dict) -> Start:
        session_id = field_of(message, "sessionId")
        call_sid = field_of(message, "callSid")
        if not session_id or not call_sid:
            raise ProtocolError("setup.sessionId and setup.callSid must not be empty", INVALID_PAYLOAD)
        params = message.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("setup.customParameters must be an object", INVALID_PAYLOAD)
        token = str(params.get("token", ""))
        valid_for = token_valid_for(self.secret, token, call_sid, self.clock(), WEBHOOK)
        parameters = {str(k): str(v) for k, v in params.items() if k != "token"}
        for name, key in (("From", "from"), ("To", "to")):
            if isinstance(message.get(key), str) and message[key]:
                parameters[name] = message[key]
        parameters["CallSid"] = call_sid
        self.session_id = session_id
        return Start(session_id, parameters, claim=token, claim_seconds=valid_for)

    @staticmethod
    def _milliseconds(message: dict) -> int:
        """durationUntilInterruptMs: Twilio's examples show it both as a number and as a string of digits."""
        value = message.get("durationUntilInterruptMs", 0)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return int(value)
        raise ProtocolError("interrupt.durationUntilInterruptMs must be a number of milliseconds", INVALID_PAYLOAD)

    def text(self, token: str, last: bool) -> str:
        """A piece of our reply for ConversationRelay to speak; `last` ends the reply."""
        return json.dumps({"type": "text", "token": token, "last": last})

    def end(self, handoff_data: str) -> str:
        """End the session: Twilio hangs up, or hands `handoff_data` to `<Connect action>` when the TwiML sets one."""
        return json.dumps({"type": "end", "handoffData": handoff_data})
