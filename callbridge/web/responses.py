"""The one shape of a refused HTTP request: the client contract's failure body and a status."""

from __future__ import annotations

from typing import Any

from callbridge.core.messages import failed


def failure(status: int, error: str, **meta: Any) -> tuple[dict[str, Any], int]:
    """`({"status": "failed", "meta": {"error": error, ...}}, status)`."""
    return failed(error, **meta), status
