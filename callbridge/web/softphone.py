"""The softphone page at `/`: try a bot from a browser over WebRTC or the µ-law WebSocket.

Plain HTML, CSS and JavaScript in static/ (served at /static/); nothing to build.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app


def softphone() -> Blueprint:
    routes = Blueprint("softphone", __name__)

    @routes.get("/")
    async def index() -> Response:
        response = await current_app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    return routes
