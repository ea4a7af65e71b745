"""A ConversationRelay client speaking Twilio's published wire protocol, as Twilio's side of a session does.

`relay_webhook` POSTs `/relay/incoming` as Twilio would (signed when given the auth token) and reads the
`<Connect><ConversationRelay>` TwiML; `RelayClient` opens its socket (the upgrade signed over the wss:// URL with
no parameters), sends `setup` with the TwiML's `<Parameter>`s as customParameters, then `prompt`, `interrupt` and
`dtmf` messages, and reads back the `text` tokens and `end`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect


@dataclass
class RelayTwiml:
    """What the webhook answered: the ConversationRelay attributes and its `<Parameter>`s."""

    url: str
    attributes: dict[str, str]
    parameters: dict[str, str]
    call_sid: str


def relay_webhook(base_url: str, auth_token: str = "", signature: str | None = None, **form: str) -> RelayTwiml:
    """POST /relay/incoming as Twilio does; raises RuntimeError with the answer when rejected or refused.
    `signature` overrides the one computed from `auth_token` (a forged one)."""
    url = base_url.rstrip("/") + "/relay/incoming"
    params = {"CallSid": "CA" + secrets.token_hex(16), "AccountSid": "AC" + secrets.token_hex(16),
              "From": "+15550100001", "To": "+15550100002", "Direction": "inbound", **form}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, params)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            twiml = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"webhook answered {exc.code}: {exc.read().decode(errors='replace')}") from None
    root = ET.fromstring(twiml)
    if root.find("Reject") is not None:
        raise RuntimeError(f"call rejected: {twiml}")
    relay = root.find("./Connect/ConversationRelay")
    if relay is None:
        raise RuntimeError(f"no <Connect><ConversationRelay> in TwiML: {twiml}")
    parameters = {p.get("name", ""): p.get("value", "") for p in relay.findall("Parameter")}
    return RelayTwiml(relay.get("url", ""), dict(relay.attrib), parameters, params["CallSid"])


def setup_message(twiml: RelayTwiml, session_id: str = "", **overrides: Any) -> str:
    """ConversationRelay's `setup`: the session's and call's ids, the numbers, the TwiML's parameters."""
    return json.dumps({
        "type": "setup", "sessionId": session_id or "VX" + secrets.token_hex(16),
        "accountSid": "AC" + "0" * 32, "parentCallSid": "", "callSid": twiml.call_sid,
        "from": twiml.parameters.get("From", ""), "to": twiml.parameters.get("To", ""), "forwardedFrom": "",
        "callType": "PSTN", "callerName": "", "direction": "inbound", "callStatus": "RINGING",
        "customParameters": twiml.parameters, **overrides,
    })


@dataclass
class Reply:
    """One reply: its tokens in order, when the first came (monotonic), whether its `last` came."""

    tokens: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    last: bool = False

    @property
    def text(self) -> str:
        return "".join(self.tokens)


class RelayClient:
    """One ConversationRelay session's socket, Twilio's side."""

    def __init__(self, twiml: RelayTwiml, auth_token: str = "") -> None:
        self.twiml = twiml
        self.auth_token = auth_token
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> RelayClient:
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(self.twiml.url, {})
        self.ws = await connect(self.twiml.url, additional_headers=headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def send(self, message: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def setup(self, **overrides: Any) -> None:
        await self.send(setup_message(self.twiml, **overrides))

    async def prompt(self, text: str) -> float:
        """Send a final prompt; returns when it went (monotonic)."""
        await self.send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})
        return time.monotonic()

    async def interrupt(self, heard: str, heard_ms: int | str) -> None:
        await self.send({"type": "interrupt", "utteranceUntilInterrupt": heard, "durationUntilInterruptMs": heard_ms})

    async def dtmf(self, digit: str) -> None:
        await self.send({"type": "dtmf", "digit": digit})

    async def message(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def reply(self, timeout: float = 10.0, tokens: int | None = None) -> Reply:
        """Read a reply until its `last` token, or until `tokens` tokens came."""
        reply = Reply()
        while not reply.last and (tokens is None or len(reply.tokens) < tokens):
            message = await self.message(timeout)
            assert message["type"] == "text", message
            assert isinstance(message["token"], str) and isinstance(message["last"], bool), message
            if message["token"]:
                reply.first_token_at = reply.first_token_at or time.monotonic()
                reply.tokens.append(message["token"])
            reply.last = message["last"]
        return reply

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait for the server to close the socket; its close code and reason."""
        assert self.ws is not None
        try:
            await asyncio.wait_for(self.ws.wait_closed(), timeout)
        except TimeoutError:
            return None, ""
        return self.ws.close_code, self.ws.close_reason or ""
