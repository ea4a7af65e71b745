"""What a media socket handler needs from a WebSocket, whoever serves it.

The edge (callbridge.edge.server) serves the media sockets on websockets' sans-I/O protocol; connections
that reach Hypercorn instead are served through ASGI (callbridge.edge.asgi). Both give the handlers the
same few operations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class ClientGone(Exception):
    """The client closed the socket (or the connection dropped)."""


class WebSocket(Protocol):
    """An accepted server-side WebSocket carrying JSON text messages."""

    scheme: str  # "ws" or "wss", as the request reached this process
    headers: dict[str, str]  # lower-case names
    host: str
    closed: bool

    async def receive(self) -> str | bytes:
        """The next message; raises ClientGone once the client has closed and nothing is left to read."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raises ClientGone when the socket is closed."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with `code`; does nothing when already closed."""
        ...

    def listen(self, listener: Listener | None) -> None:
        """Offer each message to `listener` as it arrives, before it is queued for `receive` (None: stop).

        A listener handles a message at once, on the event loop's callback (no hop to the task that awaits
        `receive`), and returns True; it returns False to leave the message to `receive`. A message is only
        offered while nothing is queued ahead of it, so messages are handled in the order they came. A
        socket may never call the listener (the ASGI one does not): `receive` then gets every message.
        """
        ...


Handler = Callable[[Any, WebSocket], Awaitable[None]]
Listener = Callable[[str | bytes], bool]
