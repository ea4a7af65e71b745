"""HTTP routes for additional inputs and outputs, so no user code is needed for the common case.

- `POST /input_hook` `{"webrtc_id": ID, <field>: <value>, ...}`: `set_input(ID, *values)` with the
  other fields' values in the order the body gives them; applies to the call's next turn.
- `GET /updates?webrtc_id=ID`: the call's additional outputs as Server-Sent Events, one `output`
  event per output (`data` is the JSON list of values), until the call ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from callbridge.core.messages import failed, jsonable
from callbridge.sessions.registry import UnknownSession
from callbridge.sessions.shared import SharedRegistryUnavailable

api = Blueprint("api", __name__)


def _error(status: int, message: str) -> tuple[dict, int]:
    return failed(message), status


@api.post("/input_hook")
async def input_hook() -> tuple[dict, int]:
    from callbridge.serve import services

    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("webrtc_id"), str) or not body["webrtc_id"]:
        return _error(422, 'body must be a JSON object with a string "webrtc_id"')
    call_id = body.pop("webrtc_id")
    try:
        await services().set_input(call_id, *body.values())
    except UnknownSession:
        return _error(404, f"no call with webrtc_id {call_id!r}")
    except SharedRegistryUnavailable as exc:
        return _error(503, f"cannot reach the call {call_id!r} in another process: {exc}")
    return {"status": "ok"}, 200


@api.get("/updates")
async def updates() -> Response | tuple[dict, int]:
    from callbridge.serve import services

    call_id = request.args.get("webrtc_id", "")
    if not call_id:
        return _error(422, "the webrtc_id query parameter is required")
    try:
        stream = await services().output_stream(call_id)
    except UnknownSession:
        return _error(404, f"no call with webrtc_id {call_id!r}")
    except SharedRegistryUnavailable as exc:
        return _error(503, f"cannot reach the call {call_id!r} in another process: {exc}")

    async def events() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        async for outputs in stream:
            yield f"event: output\ndata: {json.dumps(jsonable(list(outputs)))}\n\n".encode()

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
