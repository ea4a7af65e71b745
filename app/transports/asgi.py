"""The two µ-law media sockets on ASGI, in front of Quart, for connections that reach Hypercorn.

The edge (app.transports.edge) serves media sockets itself; a media upgrade still reaches Hypercorn when
the app runs behind another ASGI server. Every inbound 20 ms media message through Quart's websocket
layer costs a blinker signal, a queue hop to a second task and context-local lookups, so these routes
read and write the ASGI events directly; everything else goes to the Quart app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.transports.websocket import ClientGone, Handler, Listener


class RawWebSocket:
    """The few operations a media socket needs, on ASGI receive/send."""

    def __init__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Callable[..., Any]):
        self._receive = receive
        self._send = send
        self.scheme: str = scope.get("scheme", "ws")
        self.headers = {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope["headers"]}
        self.host = self.headers.get("host", "")
        self.closed = False

    async def accept(self) -> None:
        event = await self._receive()
        if event["type"] != "websocket.connect":
            raise ClientGone
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        event = await self._receive()
        if event["type"] == "websocket.receive":
            text = event.get("text")
            return text if text is not None else event.get("bytes") or b""
        self.closed = True
        raise ClientGone

    async def send(self, text: str) -> None:
        if self.closed:
            raise ClientGone
        await self._send({"type": "websocket.send", "text": text})

    def listen(self, listener: Listener | None) -> None:
        """Every message goes through `receive` here: ASGI hands them over one await at a time."""

    async def close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class MediaSocketRoutes:
    """ASGI middleware: WebSocket requests for `routes` go to their handler, the rest to the app."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: Any, routes: dict[str, Handler]) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = self.routes.get(scope.get("path", "")) if scope["type"] == "websocket" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        ws = RawWebSocket(scope, receive, send)
        try:
            await ws.accept()
            await handler(self.state, ws)
        except ClientGone:
            pass
