"""`python -m callbridge dial +15550100`: place an outbound call through the running service (`POST /calls`).

The service places it (callbridge.web.calls), so the command needs only its URL and API_TOKEN, both read
from the environment and `.env` as the service reads them. It prints the new call's CallSid, or why the
service refused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def request_body(to: str, from_: str | None, params: list[str], machine_detection: str | None) -> dict[str, Any]:
    """The POST /calls body for the command's arguments; raises ValueError for a NAME=VALUE without `=`."""
    parameters = {}
    for param in params:
        name, equals, value = param.partition("=")
        if not equals:
            raise ValueError(f"--param {param!r}: give NAME=VALUE")
        parameters[name] = value
    body: dict[str, Any] = {"to": to}
    if from_:
        body["from"] = from_
    if parameters:
        body["parameters"] = parameters
    if machine_detection:
        body["machine_detection"] = machine_detection
    return body


def main(args) -> int:  # type: ignore[no-untyped-def] - argparse's namespace
    from callbridge.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"callbridge dial: {exc}")
        return 2
    if not settings.api_token:
        print("callbridge dial: API_TOKEN is not set (the service's outbound-call API is off without it)")
        return 2
    try:
        body = request_body(args.to, args.from_, args.param, args.machine_detection)
    except ValueError as exc:
        print(f"callbridge dial: {exc}")
        return 2
    url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/") + "/calls"
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {settings.api_token}"})
    try:
        with urllib.request.urlopen(request, timeout=settings.twilio_api_timeout_seconds + 5) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            meta = json.loads(text)["meta"]
            detail = meta.pop("error") + "".join(f"; {key}: {value}" for key, value in meta.items())
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = text[:200]
        print(f"call not placed: HTTP {exc.code}: {detail}")
        return 1
    except OSError as exc:
        print(f"callbridge dial: cannot reach {url}: {exc}")
        return 2
    print(f"call placed: {answer['call_sid']}")
    return 0
