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
    """Ready: models are loaded and the service accepts new calls (not while draining)."""
    from app.server import services

    state = services()
    if state.ready:
        return {"status": "ready", "calls": await state.count()}, 200
    return {"status": "draining" if state.draining else "starting"}, 503


@health.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    from app.metrics import CONTENT_TYPE
    from app.server import services

    return Response(services().metrics.render(), content_type=CONTENT_TYPE)
