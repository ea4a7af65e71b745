"""The one shape of a refused HTTP request (the client contract's failure body and a status), and the JSON
the app reads."""

from __future__ import annotations

from typing import Any

import orjson
from quart.json.provider import DefaultJSONProvider

from callbridge.core.messages import failed


class JsonProvider(DefaultJSONProvider):
    """Request bodies parsed with orjson: its nesting limit (1,024) makes a body nested 100,000 deep a
    ValueError (so `get_json(silent=True)` gives None, and the route its 400), where `json` overflows the
    stack with a RecursionError (a 500 and a traceback)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def failure(status: int, error: str, **meta: Any) -> tuple[dict[str, Any], int]:
    """`({"status": "failed", "meta": {"error": error, ...}}, status)`."""
    return failed(error, **meta), status
