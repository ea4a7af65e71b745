"""What a media socket handler needs from a WebSocket, and what a media route is: the edge's MediaConnection
offers the one and enforces the other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


class ClientGone(Exception):
    """The client closed the socket, the connection dropped, or the edge dropped it: then `reason` says why."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


Listener = Callable[[str | bytes], None]
#: Told once that nothing more will arrive, with why the edge dropped the socket ("" when the client went).
Gone = Callable[[str], None]


class WebSocket(Protocol):
    """An accepted server-side WebSocket carrying JSON text messages (and binary audio, for Vonage)."""

    scheme: str  # "ws" or "wss", as the request reached this process
    headers: dict[str, str]  # lower-case names
    host: str
    closed: bool

    def listen(self, listener: Listener, on_gone: Gone) -> None:
        """Hand every message to `listener` as it arrives, in order, on the event loop's callback (messages that
        came before are handed over now); call `on_gone` once when nothing more will arrive. One path for every
        message: a 20 ms media message never wakes a task."""
        ...

    async def send(self, message: str | bytes) -> None:
        """Send one message (text, or binary for bytes); raises ClientGone when the socket is closed."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with `code`; does nothing when already closed."""
        ...


Handler = Callable[[WebSocket], Awaitable[None]]
#: From an upgrade request's headers (lower-case names): why it is refused (answered 403), or None.
Admission = Callable[[dict[str, str]], str | None]


@dataclass(frozen=True, slots=True)
class Route:
    """A media socket route: its handler and what the edge enforces on its sockets, so that a client that
    never answers or never reads cannot keep a call's slot."""

    handler: Handler
    ping_timeout: float  # the edge pings this often; a socket whose pong has not come by the next ping is dropped
    send_timeout: float  # a socket whose outbound data stays backed up this long is dropped
    admission: Admission | None = None
