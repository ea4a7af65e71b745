"""A local server speaking Twilio's REST wire format, for the two requests callbridge makes.

`POST /2010-04-01/Accounts/{AccountSid}/Calls.json` (form-encoded To, From, Url, MachineDetection...) creates
a call: 201 and the call resource as JSON with its "sid". `POST .../Calls/{CallSid}.json` (Twiml) updates a
live call: 200. HTTP basic auth AccountSid:AuthToken, else 401 with Twilio's error JSON. Every request is
recorded for the test to assert; an answer queued in `answers` (status, JSON, delay) replaces the next one.
It runs in a thread, so tests on any event loop (and the server under test, another process) can use it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.processes import free_port

_CALLS = re.compile(r"/2010-04-01/Accounts/(AC[0-9a-f]{32})/Calls(?:/(CA[0-9a-f]{32}))?\.json")


@dataclass(frozen=True)
class RestRequest:
    path: str
    form: dict[str, str]
    auth: tuple[str, str] | None
    at: float  # time.monotonic() when it arrived


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | str  # a str is sent as is (not JSON)
    delay: float = 0.0


def twilio_error(status: int, code: int, message: str) -> Answer:
    """An error as Twilio's REST API words it."""
    return Answer(status, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                           "status": status})


class FakeTwilio:
    def __init__(self, account_sid: str = "AC" + "a1" * 16, auth_token: str = "fake-auth-token") -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RestRequest] = []
        self.answers: deque[Answer] = deque()
        self.created: list[str] = []  # the CallSids of the calls it created
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeTwilio:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, form: dict[str, str], auth: tuple[str, str] | None) -> Answer:
        self.requests.append(RestRequest(path, form, auth, time.monotonic()))
        match = _CALLS.fullmatch(path)
        if match is None or match[1] != self.account_sid:
            return twilio_error(404, 20404, f"The requested resource {path} was not found")
        if auth != (self.account_sid, self.auth_token):
            return twilio_error(401, 20003, "Authenticate")
        if self.answers:
            return self.answers.popleft()
        if match[2] is None:
            sid = "CA" + secrets.token_hex(16)
            self.created.append(sid)
            return Answer(201, {"sid": sid, "account_sid": self.account_sid, "to": form.get("To"),
                                "from": form.get("From"), "status": "queued", "direction": "outbound-api",
                                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json"})
        return Answer(200, {"sid": match[2], "account_sid": self.account_sid, "status": "in-progress"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                auth = None
                scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
                if scheme == "Basic":
                    user, _, password = base64.b64decode(credentials).decode().partition(":")
                    auth = (user, password)
                answer = fake._answer(self.path, form, auth)
                time.sleep(answer.delay)
                body = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
