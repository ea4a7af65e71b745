"""A simulated Telnyx caller: what Telnyx's cloud would do on a TeXML call, against a real server on loopback.

`telnyx_webhook` POSTs the TeXML application's form-encoded call fields to `/telnyx/incoming`, signed as
Telnyx signs them (Ed25519 over `{telnyx-timestamp}|{body}`) with a key the test made, and reads the
`<Connect><Stream>` out of the TeXML. `TelnyxCaller` is callbridge.simulator's caller (real-time 20 ms frames,
a player that echoes marks once heard and empties itself on `clear`) speaking Telnyx's frames: `connected`,
`start` with stream_id and call_control_id, `media` with track/chunk/timestamp, `dtmf`, `mark` echoes and
`stop`. The server's messages to it (`media`, `mark`, `clear`) have the shape the base caller reads.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from callbridge.simulator import SimulatedCaller, Step


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


class TelnyxCaller(SimulatedCaller):
    """callbridge.simulator's caller on a Telnyx call: the signed TeXML webhook, then Telnyx's frames."""

    def __init__(self, base_url: str, script: list[Step], key: Ed25519PrivateKey | None, *,
                 hangup_when_done: bool = True, **fields: str) -> None:
        super().__init__(base_url, script, hangup_when_done=hangup_when_done, webhook_form=fields)
        self.key = key
        self._sequence = 1  # `start` is 1; Telnyx numbers every frame of the stream

    def _answer(self) -> tuple[str, dict[str, str], list[str]]:
        stream_url, params = telnyx_webhook(self.base_url, self.key, **self.webhook_form)
        self._call_sid = params.pop("CallSid")
        path = urllib.parse.urlsplit(stream_url).path
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + path
        self.stream_sid = str(uuid.uuid4())
        return ws_url, {}, [json.dumps({"event": "connected", "version": "1.0.0"}),
                            start_message(self.stream_sid, self._call_sid, params)]

    async def _hang_up(self, ws) -> None:
        await ws.send(stop_message(self.stream_sid, self._call_sid))

    def _frame(self, event: str, **body: Any) -> str:
        self._sequence += 1
        return json.dumps({"event": event, "sequence_number": str(self._sequence), "stream_id": self.stream_sid,
                           **body})

    def _media_message(self, chunk: int, payload: str) -> str:
        return self._frame("media", media={"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                                           "payload": payload})

    def _dtmf_message(self, digit: str) -> str:
        return self._frame("dtmf", dtmf={"digit": digit})

    def _mark_echo(self, name: str) -> str:
        return self._frame("mark", mark={"name": name})
