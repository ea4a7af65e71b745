"""A simulated Plivo caller: the simulator's caller (callbridge.simulator) speaking Plivo's wire protocol.

It POSTs the answer URL as Plivo does (form fields CallUUID, From, To..., signed with X-Plivo-Signature-V3 when
given an auth token), reads the `<Stream>` from the Plivo XML, connects to its URL and sends Plivo's `start`
(with the Stream's extraHeaders), then `media` every 20 ms and `dtmf`. Like Plivo's player it answers a
`checkpoint` with `playedStream` once the audio sent before it has played; on `clearAudio` it drops what it
buffered, answers `clearedAudio`, and the checkpoints it dropped are never answered. It hangs up by closing the
socket (Plivo sends no stop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET

from callbridge.simulator import SimulatedCaller

ACCOUNT = "MA" + "A1B2C3D4E5F6G7H8I9"  # an Auth ID's shape


def plivo_signature(auth_token: str, url: str, nonce: str, params: dict[str, str]) -> str:
    """X-Plivo-Signature-V3 of a POST to `url` (no query string) with form `params`, as Plivo's docs put it:
    the URL, "?", each parameter's key and value sorted by key, ".", the nonce; HMAC-SHA256; base64."""
    signed = url + "?" + "".join(key + params[key] for key in sorted(params)) + "." + nonce
    return base64.b64encode(hmac.new(auth_token.encode(), signed.encode(), hashlib.sha256).digest()).decode()


def post_answer_url(url: str, params: dict[str, str], auth_token: str = "", signed_url: str = "",
                    signed_params: dict[str, str] | None = None) -> tuple[int, str]:
    """POST Plivo's answer-URL request; (status, body). Signed with `auth_token` over `signed_url` and
    `signed_params` (by default what is sent) when given."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        nonce = secrets.token_hex(10)
        signed = params if signed_params is None else signed_params
        headers["X-Plivo-Signature-V3"] = plivo_signature(auth_token, signed_url or url, nonce, signed)
        headers["X-Plivo-Signature-V3-Nonce"] = nonce
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answer_params(**form: str) -> dict[str, str]:
    """The answer URL's form fields for a new inbound call."""
    return {"CallUUID": str(uuid.uuid4()), "From": "15550100001", "To": "15550100002", "Direction": "inbound",
            "Event": "StartApp", "CallStatus": "ringing", **form}


def start_message(stream_id: str, call_id: str, extra_headers: str, account: str = ACCOUNT) -> str:
    """Plivo's `start`, as its docs show it (the extra headers `;`-separated)."""
    return json.dumps({
        "event": "start", "sequenceNumber": 1,
        "start": {"callId": call_id, "streamId": stream_id, "accountId": account, "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
        "extra_headers": extra_headers.replace(",", ";"),
    })


class PlivoCaller(SimulatedCaller):
    def __init__(self, *args, account: str = ACCOUNT, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.account = account
        self.cleared_answered = 0  # clearedAudio messages sent
        self._cleared = False

    def _answer(self) -> tuple[str, dict[str, str], list[str]]:
        params = answer_params(**self.webhook_form)
        url = self.base_url + "/plivo/incoming"
        signed_url = (self.public_url.rstrip("/") or self.base_url) + "/plivo/incoming"
        status, body = post_answer_url(url, params, self.auth_token, signed_url)
        if status != 200:
            raise RuntimeError(f"answer URL answered {status}: {body}")
        root = ET.fromstring(body)
        if root.find("Hangup") is not None:
            raise RuntimeError(f"call rejected: {body}")
        stream = root.find("Stream")
        if stream is None or not stream.text:
            raise RuntimeError(f"no <Stream> in the Plivo XML: {body}")
        self.stream_xml = stream.attrib
        self._call_sid = params["CallUUID"]
        path = urllib.parse.urlsplit(stream.text.strip()).path
        ws_url = self.base_url.replace("http://", "ws://") + path
        self.stream_sid = str(uuid.uuid4())
        return ws_url, {}, [start_message(self.stream_sid, self._call_sid, stream.get("extraHeaders", ""),
                                          self.account)]

    hangup_note = "the caller closed the socket"

    async def _hang_up(self, ws) -> None:
        await ws.close()

    def _dispatch(self, t: float, raw: str | bytes) -> bool:
        message = json.loads(raw)
        event = message.get("event")
        if event == "playAudio":
            assert message["media"]["contentType"] == "audio/x-mulaw" and message["media"]["sampleRate"] == 8000
            self._on_media(t, base64.b64decode(message["media"]["payload"]))
        elif event == "checkpoint":
            self._on_mark(message["name"])
        elif event == "clearAudio":
            self._pending_marks.clear()  # Plivo answers only the checkpoints whose audio was played
            self._on_clear(t)
            self._cleared = True
            return True
        else:
            self._on_other(t, raw)
        return False

    async def _echo_marks(self, ws) -> None:
        if self._cleared:
            self._cleared = False
            self.cleared_answered += 1
            await ws.send(json.dumps({"event": "clearedAudio", "sequenceNumber": 0, "streamId": self.stream_sid}))
        await super()._echo_marks(ws)

    def _mark_echo(self, name: str) -> str:
        return json.dumps({"event": "playedStream", "sequenceNumber": 0, "streamId": self.stream_sid, "name": name})

    def _media_message(self, chunk: int, payload: str) -> str:
        return json.dumps({
            "event": "media", "sequenceNumber": chunk + 1, "streamId": self.stream_sid,
            "media": {"track": "inbound", "timestamp": str(chunk * 20), "chunk": chunk, "payload": payload},
            "extra_headers": "",
        })

    def _dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": 0, "streamId": self.stream_sid,
                           "dtmf": {"track": "inbound", "digit": digit, "timestamp": "0"}})
