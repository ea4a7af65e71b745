"""What the browser API's routes (WebRTC signalling, inputs and outputs) refuse before they run.

- A page from a foreign origin, 403: else any web site a visitor opens could start calls in their name and
  fill the slots (`Settings.origin_refusal`: same origin, no Origin at all, or ALLOWED_ORIGINS).
- A POST body that is not `application/json`, 415: a cross-site form or `text/plain` fetch needs no CORS
  preflight, a JSON one does, so only JSON bodies keep other sites' pages out even where Origin is missing.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, request

from callbridge.settings import Settings
from callbridge.web.responses import failure

logger = logging.getLogger("callbridge.web")


def guard_browser_api(routes: Blueprint, settings: Settings) -> None:
    """Check every request to `routes` for its origin and, if it is a POST, for a JSON body."""

    @routes.before_request
    async def refuse() -> tuple[dict[str, Any], int] | None:
        if (refusal := settings.origin_refusal(request.headers.get("Origin"), request.host)) is not None:
            logger.warning("refused %s %s: %s", request.method, request.path, refusal)
            return failure(403, refusal)
        if request.method == "POST" and request.mimetype != "application/json":
            sent = request.mimetype or "no Content-Type"
            return failure(415, f"the body must be JSON sent as Content-Type: application/json, not {sent}")
        return None
