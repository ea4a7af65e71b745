"""HTTP routes for additional inputs and outputs, so no user code is needed for the common case.

- `POST /input_hook` `{"webrtc_id": ID, <field>: <value>, ...}`: `set_input(ID, *values)` with the
  other fields' values in the order the body gives them; applies to the call's next turn.
- `GET /updates?webrtc_id=ID`: the call's additional outputs as Server-Sent Events, one `output`
  event per output (`data` is the JSON list of values), until the call ends.

Like the signalling routes, they refuse pages from foreign origins and bodies that are not JSON
(callbridge.web.guards).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from callbridge.core.messages import jsonable
from callbridge.services import Services
from callbridge.sessions.registry import ServiceUnavailable, UnknownSession
from callbridge.web.guards import guard_browser_api
from callbridge.web.responses import failure


def io(services: Services) -> Blueprint:
    routes = Blueprint("io", __name__)
    guard_browser_api(routes, services.settings)

    @routes.post("/input_hook")
    async def input_hook() -> tuple[dict, int]:
        body = await request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("webrtc_id"), str) or not body["webrtc_id"]:
            return failure(422, 'body must be a JSON object with a string "webrtc_id"')
        call_id = body.pop("webrtc_id")
        try:
            await services.registry.set_input(call_id, *body.values())
        except UnknownSession:
            return failure(404, f"no call with webrtc_id {call_id!r}")
        except ServiceUnavailable as exc:
            return failure(503, f"cannot reach the call {call_id!r} in another process: {exc}")
        return {"status": "ok"}, 200

    @routes.get("/updates")
    async def updates() -> Response | tuple[dict, int]:
        call_id = request.args.get("webrtc_id", "")
        if not call_id:
            return failure(422, "the webrtc_id query parameter is required")
        try:
            stream = await services.registry.output_stream(call_id)
        except UnknownSession:
            return failure(404, f"no call with webrtc_id {call_id!r}")
        except ServiceUnavailable as exc:
            return failure(503, f"cannot reach the call {call_id!r} in another process: {exc}")

        async def events() -> AsyncIterator[bytes]:
            yield b": connected\n\n"
            async for outputs in stream:
                yield f"event: output\ndata: {json.dumps(jsonable(list(outputs)))}\n\n".encode()

        response = Response(events(), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    return routes
