"""A simulated Telnyx caller: what Telnyx's cloud would do on a TeXML call, against a real server on loopback.

`telnyx_webhook` POSTs the TeXML application's form-encoded call fields to `/telnyx/incoming`, signed as
Telnyx signs them (Ed25519 over `{telnyx-timestamp}|{body}`) with a key the test made, and reads the
`<Connect><Stream>` out of the TeXML. `TelnyxCaller` is callbridge.simulator's caller (real-time 20 ms frames,
a player that echoes marks once heard and empties itself on `clear`) speaking Telnyx's frames: `connected`,
`start` with stream_id and call_control_id, `media` with track/chunk/timestamp, `dtmf`, `mark` echoes and
`stop`. The server's messages to it (`media`, `mark`, `clear`) have the shape the base caller reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callbridge.simulator import CallReport, SimulatedCaller, Step


def public_key_base64(key: Ed25519PrivateKey) -> str:
    """The form Mission Control shows the account's public key in (TELNYX_PUBLIC_KEY)."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def signed_headers(key: Ed25519PrivateKey, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = key.sign(f"{timestamp}|".encode() + body)
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": str(timestamp)}


def call_form(**fields: str) -> dict[str, str]:
    """What a TeXML application sends for an incoming call; `fields` add to or override it."""
    return {"CallSid": "v3:" + secrets.token_urlsafe(32), "AccountSid": str(uuid.uuid4()), "From": "+15550100001",
            "To": "+15550100002", "Direction": "inbound", "CallStatus": "ringing", **fields}


def post_incoming(base_url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(base_url.rstrip("/") + "/telnyx/incoming", body,
                                     {"Content-Type": "application/x-www-form-urlencoded", **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def telnyx_webhook(base_url: str, key: Ed25519PrivateKey | None, **fields: str) -> tuple[str, dict[str, str]]:
    """The signed webhook (unsigned without a key); returns the Stream URL and its `<Parameter>`s plus the
    CallSid. Raises RuntimeError with the answer if the call was refused or rejected."""
    form = call_form(**fields)
    body = urllib.parse.urlencode(form).encode()
    status, texml = post_incoming(base_url, body, signed_headers(key, body) if key is not None else {})
    if status != 200:
        raise RuntimeError(f"webhook answered {status}: {texml}")
    root = ET.fromstring(texml)
    if root.find("Reject") is not None:
        raise RuntimeError(f"call rejected: {texml}")
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise RuntimeError(f"no <Connect><Stream> in TeXML: {texml}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    parameters["CallSid"] = form["CallSid"]
    return stream.get("url", ""), parameters


def start_message(stream_id: str, call_control_id: str, parameters: dict[str, str], *,
                  encoding: str = "PCMU") -> str:
    """Telnyx's `start`: the stream's and call's ids, the TeXML's <Parameter>s, the media format."""
    return json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": stream_id,
        "start": {"user_id": str(uuid.uuid4()), "call_control_id": call_control_id,
                  "call_session_id": str(uuid.uuid4()), "from": parameters.get("From", ""),
                  "to": parameters.get("To", ""), "custom_parameters": parameters,
                  "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1}},
    })


def stop_message(stream_id: str, call_control_id: str) -> str:
    return json.dumps({"event": "stop", "sequence_number": "999999", "stream_id": stream_id,
                       "stop": {"user_id": str(uuid.uuid4()), "call_control_id": call_control_id}})


class TelnyxWire:
    """The caller's socket, with the base simulator's Twilio-shaped frames sent as Telnyx words them."""

    def __init__(self, ws: ClientConnection, stream_id: str) -> None:
        self.ws = ws
        self.stream_id = stream_id
        self.sequence = 1  # `start` was 1

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self.ws.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ws, name)

    async def send(self, text: str) -> None:
        message = json.loads(text)
        self.sequence += 1
        framed: dict[str, Any] = {"event": message["event"], "sequence_number": str(self.sequence),
                                  "stream_id": self.stream_id}
        if message["event"] == "media":
            media = message["media"]
            framed["media"] = {"track": "inbound", "chunk": media["chunk"], "timestamp": media["timestamp"],
                               "payload": media["payload"]}
        elif message["event"] == "dtmf":
            framed["dtmf"] = {"digit": message["dtmf"]["digit"]}
        elif message["event"] == "mark":
            framed["mark"] = {"name": message["mark"]["name"]}
        else:
            raise ValueError(f"no Telnyx form for {message['event']!r}")
        await self.ws.send(json.dumps(framed))


class TelnyxCaller(SimulatedCaller):
    def __init__(self, base_url: str, script: list[Step], key: Ed25519PrivateKey | None, *,
                 hangup_when_done: bool = True, **fields: str) -> None:
        super().__init__(base_url, script, hangup_when_done=hangup_when_done, webhook_form=fields)
        self.key = key

    async def run(self) -> CallReport:
        self._t0 = time.monotonic()
        try:
            stream_url, params = await asyncio.to_thread(telnyx_webhook, self.base_url, self.key,
                                                         **self.webhook_form)
        except RuntimeError as exc:
            self.report.rejected = str(exc)
            return self.report
        call_control_id = params.pop("CallSid")
        path = urllib.parse.urlsplit(stream_url).path
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + path
        stream_id = str(uuid.uuid4())
        async with connect(ws_url, max_size=None, open_timeout=10) as ws:
            wire = TelnyxWire(ws, stream_id)
            self.stream_sid = stream_id
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(start_message(stream_id, call_control_id, params))
            receiver = asyncio.create_task(self._receive(wire))
            try:
                await self._send_script(wire)
                if self.hangup_when_done:
                    await ws.send(stop_message(stream_id, call_control_id))
                    self._stopped = True
                    self.report.log(self.now(), "hangup", "the caller sent stop")
                    await asyncio.wait_for(asyncio.shield(receiver), 5)
                else:
                    await receiver
            except (ConnectionClosed, TimeoutError):
                pass
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
        self.report.close_code = ws.close_code
        self.report.close_reason = ws.close_reason or ""
        self.report.finish()
        return self.report
