"""Liveness and readiness probes."""

from __future__ import annotations

from quart import Blueprint, Response

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> tuple[dict, int]:
    """Alive: the process answers HTTP."""
    return {"status": "ok"}, 200


@health.get("/readyz")
async def readyz() -> tuple[dict, int]:
    """Ready: models are loaded and the service accepts new calls (not while draining, nor while the
    shared registry is out of reach: new calls would be refused)."""
    from callbridge.serve import services
    from callbridge.sessions.shared import SharedRegistryUnavailable

    state = services()
    if not state.ready:
        return {"status": "draining" if state.draining else "starting"}, 503
    try:
        return {"status": "ready", "calls": await state.count()}, 200
    except SharedRegistryUnavailable as exc:
        return {"status": "unavailable", "reason": str(exc)}, 503


@health.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    from callbridge.metrics import CONTENT_TYPE
    from callbridge.serve import services

    return Response(services().metrics.render(), content_type=CONTENT_TYPE)
