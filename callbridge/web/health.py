"""Liveness, readiness and metrics."""

from __future__ import annotations

from quart import Blueprint, Response

from callbridge.metrics import CONTENT_TYPE
from callbridge.services import Services


def health(services: Services) -> Blueprint:
    routes = Blueprint("health", __name__)

    @routes.get("/healthz")
    async def healthz() -> tuple[dict, int]:
        """Alive: the process answers HTTP."""
        return {"status": "ok"}, 200

    @routes.get("/readyz")
    async def readyz() -> tuple[dict, int]:
        """Ready: models loaded and new calls taken (not while starting or draining, nor while the shared
        registry is out of reach); a service whose slots are all taken is still ready."""
        admission = await services.admission()
        if admission.ready:
            return {"status": "ready", "calls": admission.calls}, 200
        if admission.state == "unavailable":
            return {"status": "unavailable", "reason": admission.reason}, 503
        return {"status": admission.state}, 503

    @routes.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(services.metrics.render(), content_type=CONTENT_TYPE)

    return routes
