"""What a media socket handler needs from a WebSocket: the edge's MediaConnection offers it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol


class ClientGone(Exception):
    """The client closed the socket (or the connection dropped)."""


Listener = Callable[[str | bytes], None]
Gone = Callable[[], None]


class WebSocket(Protocol):
    """An accepted server-side WebSocket carrying JSON text messages."""

    scheme: str  # "ws" or "wss", as the request reached this process
    headers: dict[str, str]  # lower-case names
    host: str
    closed: bool

    def listen(self, listener: Listener, on_gone: Gone) -> None:
        """Hand every message to `listener` as it arrives, in order, on the event loop's callback (messages that
        came before are handed over now); call `on_gone` once when nothing more will arrive. One path for every
        message: a 20 ms media message never wakes a task."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raises ClientGone when the socket is closed."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with `code`; does nothing when already closed."""
        ...


Handler = Callable[[WebSocket], Awaitable[None]]
