"""The public listener: the µ-law media WebSockets served here, every other connection passed to Hypercorn.

Why: a media message through Hypercorn's WebSocket path (h11 and wsproto in pure Python, then a queue hop
to the ASGI task) costs about four times the CPU of websockets' sans-I/O protocol (C-accelerated unmasking)
on an asyncio Protocol, and a call sends fifty a second (bench/results/history.md).

Each new connection is read up to the end of its first request head. A WebSocket upgrade to a media
route is answered here and handed to that route's handler. Anything else (the webhook, the HTTP API,
WebRTC signalling, the softphone, requests that are not HTTP at all) is spliced byte for byte to
Hypercorn, which serves the Quart app on a private Unix socket; the edge adds only `Connection: close`,
so that a client's next request arrives on a new connection and is routed again, and the client's
address, which Hypercorn cannot see through the Unix socket (`ClientAddress` puts it back in the scope).

The edge keeps to one request per connection: it passes on the first request (h11 finds where its body
ends) and drops what a client pipelines behind it, unanswered, as RFC 9112 §9.6 has a server that said
`Connection: close` do (the client sends it again on a new connection). A connection is never closed while
the client may still be sending its request (a 413 for a body over the limit, for one): closing with unread
data sends a reset, which can destroy the answer before the client reads it (see `Lingering`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h11
from websockets.frames import Opcode, apply_mask
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from callbridge.core.messages import failed
from callbridge.edge.websocket import ClientGone, Gone, Listener, Route

logger = logging.getLogger("callbridge.edge")
# websockets logs every opened and closed connection at INFO; the handlers log what matters.
_ws_logger = logging.getLogger("callbridge.edge.websocket")
_ws_logger.setLevel(logging.WARNING)

HEAD_LIMIT = 16 * 1024  # a longer first request head is passed to Hypercorn, which refuses it
HEAD_TIMEOUT = 10.0  # seconds a new connection has to send its first request head
CLOSE_TIMEOUT = 2.0  # seconds the client has to answer our close frame before the TCP connection is cut
PEER_HEADER = b"x-callbridge-peer"
#: Connections waiting to be accepted, on the public port and on Hypercorn's private socket alike: a burst the
#: edge accepts can queue in front of Hypercorn too (Hypercorn's own default is 100; the kernel caps both at
#: net.core.somaxconn).
BACKLOG = 1024
#: Seconds a connection may wait for room in Hypercorn's queue when it is full (a burst bigger than BACKLOG)
#: before the client gets a 503: as long as a new connection may take to send its head.
UPSTREAM_TIMEOUT = HEAD_TIMEOUT
#: Seconds an answered connection stays open while the client still sends its request, read and dropped.
LINGER_SECONDS = 5.0

# A request line; the method is any token (RFC 9110 §9.1), so that `get` is not taken for something else.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.[01]")
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Edge:
    """Listens on the public address; owns every public connection, and the media connections it serves."""

    def __init__(self, routes: dict[str, Route], upstream: str, max_size: int) -> None:
        self.routes = routes
        self.upstream = upstream
        self.max_size = max_size  # a hard cap; the transports enforce MAX_MESSAGE_BYTES with a clear error
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.upstream_line = asyncio.Lock()  # connections waiting for room in Hypercorn's queue (Splice)
        self.sockets: set[MediaConnection] = set()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; `reuse_port` lets several worker processes share the port (the kernel spreads connections)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Connection(self), host, port, backlog=BACKLOG,
                                               reuse_port=reuse_port or None)

    async def close(self, grace: float) -> None:
        """Stop listening, close the media sockets still open and wait for their handlers; give the requests
        Hypercorn still serves `grace` seconds to be answered, then drop every connection left.

        Why the edge ends them: Hypercorn, asked to stop with a request still open (a long `/updates` stream,
        a client that never sends its body), cancels it and logs a traceback; a connection dropped here ends
        in Hypercorn as a client that went away."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.sockets):
            connection.abort()
        await asyncio.gather(*(c.task for c in list(self.sockets) if c.task is not None), return_exceptions=True)
        splices = [c.next for c in self.connections if isinstance(c.next, Splice)]
        if serving := [s.answered for s in splices if not s.answered.done()]:
            await asyncio.wait(serving, timeout=grace)
        for connection in list(self.connections):
            connection.abort()


class Connection(asyncio.Protocol):
    """The one protocol of every public connection: reads the first request head, then hands everything
    to what serves the connection (a MediaConnection, a Splice, or Lingering after the edge's own answer).
    Delegating instead of switching the transport's protocol keeps to plain asyncio (switching inside a read
    callback crashed uvloop under load)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.next: MediaConnection | Splice | Lingering | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self.transport.close)
        self.edge.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.next is not None:
            self.next.data_received(data)
            return
        assert self.transport is not None and self.timer is not None
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) <= HEAD_LIMIT:
            return
        self.timer.cancel()
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4:])
        request_line = _REQUEST_LINE.match(head) if end >= 0 else None
        path = media_upgrade_path(head) if request_line is not None else None
        route = self.edge.routes.get(path) if path is not None else None
        if route is not None:
            media = self.next = MediaConnection(self.edge, route, self.transport)
            media.start(bytes(self.buffer))
        elif request_line is not None and request_line[1] != request_line[1].upper():
            # Methods are case-sensitive and every one the app serves is upper-case, but Hypercorn upper-cases
            # what it reads: `get` would be served as GET by the app, or refused as a media upgrade here.
            self.transport.write(NOT_IMPLEMENTED)
            request = RequestEnd()
            request.take(bytes(self.buffer))
            if request.ended:
                self.transport.close()
            else:
                self.next = Lingering(self.transport, request)
        elif request_line is not None:
            first = with_peer(head, self.transport.get_extra_info("peername")) + rest
            self.next = Splice(self.transport, self.edge, first, RequestEnd())
        else:  # not HTTP, or a head too long: Hypercorn answers as it would have
            self.next = Splice(self.transport, self.edge, bytes(self.buffer), None)
        self.buffer = bytearray()

    def eof_received(self) -> bool | None:
        return self.next.eof_received() if self.next is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.next is not None:
            self.next.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.next is not None:
            self.next.pause_writing()

    def resume_writing(self) -> None:
        if self.next is not None:
            self.next.resume_writing()

    def abort(self) -> None:
        """Drop the connection at once (shutdown)."""
        assert self.transport is not None  # an Edge knows connections from connection_made on
        self.transport.abort()


def media_upgrade_path(head: bytes) -> str | None:
    """The path of a `GET ... Upgrade: websocket` request head, else None."""
    match = _REQUEST_LINE.match(head)
    if match is None or match[1] != b"GET":
        return None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and value.strip().lower() == b"websocket":
            return match[2].split(b"?", 1)[0].decode("latin1")
    return None


def with_peer(head: bytes, peer: Any) -> bytes:
    """The request head for Hypercorn: any peer header the client sent dropped, ours (the socket's peer
    address) and `Connection: close` added."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(PEER_HEADER + b":")]
    if isinstance(peer, tuple) and len(peer) >= 2:
        lines.append(PEER_HEADER + f": {peer[0]} {peer[1]}".encode())
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class RequestEnd:
    """Finds where a connection's first request ends, reading its framing (Content-Length or chunked) with h11,
    the parser Hypercorn reads it with."""

    def __init__(self) -> None:
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        self.ended = False  # the request is all in
        self.passing = False  # everything is passed on from here: a protocol switch, or what h11 cannot read

    def take(self, data: bytes) -> bytes:
        """The part of `data` that belongs to the request: all of it until its end, nothing after (unless
        passing: after an upgrade or CONNECT the bytes that follow may be another protocol's)."""
        if self.passing:
            return data
        if self.ended:
            return b""
        self.parser.receive_data(data)
        try:
            event = self.parser.next_event()
            while not isinstance(event, h11.EndOfMessage) and event is not h11.NEED_DATA:
                event = self.parser.next_event()  # the head, then the body's pieces
        except h11.RemoteProtocolError:  # Hypercorn reads it with the same parser and answers 400
            self.passing = True
            return data
        if event is h11.NEED_DATA:
            return data
        self.ended = True
        if self.parser.their_state is h11.MIGHT_SWITCH_PROTOCOL:
            self.passing = True
            return data
        return data[: len(data) - len(self.parser.trailing_data[0])]


class Splice:
    """A connection passed to Hypercorn: bytes copied both ways; when one side's writes back up, reading
    the other side pauses. `request` (None for what is not HTTP) limits what is passed to the first request."""

    def __init__(self, client: asyncio.Transport, edge: Edge, first: bytes, request: RequestEnd | None) -> None:
        self.client = client
        self.request = request
        self.server: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # what arrives before Hypercorn's socket is connected
        self.lingering: Lingering | None = None
        self.client_done = False  # the client has sent all it will send (EOF)
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # Hypercorn is done
        self.data_received(first)
        client.pause_reading()
        task = asyncio.ensure_future(self._connect(edge))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _connect(self, edge: Edge) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                server, _ = await loop.create_unix_connection(lambda: _Upstream(self), edge.upstream)
            except BlockingIOError:  # EAGAIN: Hypercorn's queue is full (a burst bigger than BACKLOG)
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    server = await self._connect_in_line(edge)
        except (OSError, TimeoutError) as exc:  # no socket or nobody on it (Hypercorn has stopped), or timed out
            if not self.client.is_closing():
                logger.error("cannot reach the HTTP app at %s: %s", edge.upstream,
                             str(exc) or f"its queue stayed full for {UPSTREAM_TIMEOUT:g} s")
                self.client.write(UNAVAILABLE)
            self.upstream_closed()
            return
        if self.client.is_closing():
            server.close()
            return
        self.server = cast(asyncio.Transport, server)
        self.server.write(b"".join(self.pending))
        self.pending = []
        self.client.resume_reading()

    async def _connect_in_line(self, edge: Edge) -> asyncio.BaseTransport:
        """Wait in line behind the connections that found Hypercorn's queue full, then retry until it takes this
        one (every 1 ms, doubling to 50 ms; Hypercorn accepts meanwhile on the same loop). Only the first in line
        retries: a burst is taken in order, without a herd of retries that would starve Hypercorn."""
        loop = asyncio.get_running_loop()
        async with edge.upstream_line:
            pause = 0.001
            while True:
                try:
                    server, _ = await loop.create_unix_connection(lambda: _Upstream(self), edge.upstream)
                    return server
                except BlockingIOError:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.05)

    def upstream_closed(self) -> None:
        """Hypercorn has answered (or could not be reached): close the client, once it has sent its request."""
        if not self.answered.done():
            self.answered.set_result(None)
        if self.request is not None and not (self.request.ended or self.request.passing or self.client_done):
            self.lingering = Lingering(self.client, self.request)
        else:
            self.client.close()

    # The client's side (called by Connection).

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingering.data_received(data)
            return
        if self.request is not None:
            data = self.request.take(data)
            if not data:
                return
        if self.server is None:
            self.pending.append(data)
        else:
            self.server.write(data)

    def eof_received(self) -> bool | None:
        # The client sent all it will send. Hypercorn is not half-closed in turn (write_eof): it answers the
        # request it has (asked to close after it), and shutting a uvloop stream down just before closing
        # it crashed under load. Our side stays open for the answer.
        if self.lingering is not None:
            return self.lingering.eof_received()
        self.client_done = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering is not None:
            self.lingering.connection_lost(exc)
        if self.server is not None:
            self.server.close()

    def pause_writing(self) -> None:  # the client is slow to read: stop reading Hypercorn's answer
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None:
            self.server.resume_reading()


class _Upstream(asyncio.Protocol):
    """Hypercorn's side of a Splice."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.client = splice.client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def eof_received(self) -> bool | None:
        return None  # Hypercorn has answered and closes (Connection: close): connection_lost closes the client

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.upstream_closed()

    def pause_writing(self) -> None:  # Hypercorn is slow to read: stop reading the client
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


class Lingering:
    """An answered connection whose client is still sending its request: the rest of the request is read and
    dropped, then the connection closed (or once the client closes its side, or after LINGER_SECONDS).
    Closed at once, a socket with unread data sends a reset, and a client still busy sending (a body over
    the limit) can lose the answer with it."""

    def __init__(self, client: asyncio.Transport, request: RequestEnd) -> None:
        self.client = client
        self.request = request
        client.resume_reading()
        self.timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, client.close)

    def data_received(self, data: bytes) -> None:
        self.request.take(data)
        if self.request.ended:
            self.client.close()

    def eof_received(self) -> bool | None:
        return None  # the transport closes once our answer is written

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class MediaConnection:
    """One media WebSocket on websockets' sans-I/O protocol, offering the handlers' WebSocket interface.

    It keeps its route's rules: an upgrade the route's admission refuses is answered 403; a ping goes out every
    `ping_timeout` seconds and a socket whose pong has not come by the next one is dropped (a frozen client:
    its kernel still acknowledges, nothing answers); so is one whose outbound data stays backed up for
    `send_timeout` (a client that never reads). Dropping aborts the connection, which ends the call."""

    scheme = "ws"

    def __init__(self, edge: Edge, route: Route, transport: asyncio.Transport) -> None:
        self.edge = edge
        self.route = route
        self.transport = transport
        self.protocol = ServerProtocol(max_size=edge.max_size, logger=_ws_logger)
        self.headers: dict[str, str] = {}
        self.host = ""
        self.closed = False  # we started closing, or the connection is gone
        self.gone = False  # the client closed or the connection dropped: nothing more will arrive
        self.gone_told = False
        self.early: deque[str | bytes] = deque()  # messages that arrived before the handler listened
        self.fragments: list[bytes] = []
        self.fragment_opcode: Opcode | None = None
        self.drained: asyncio.Future[None] | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.ping_timer: asyncio.TimerHandle | None = None  # the next ping, or the deadline of the one out
        self.ping_payload: bytes | None = None  # the ping waiting for its pong
        self.send_timer: asyncio.TimerHandle | None = None  # while outbound data is backed up
        self.dropped = ""  # why the edge dropped the connection
        self.task: asyncio.Task[None] | None = None
        self.listener: Listener | None = None
        self.on_gone: Gone | None = None

    def start(self, received: bytes) -> None:
        """Serve the connection from everything received so far (the upgrade request and maybe more)."""
        self.protocol.receive_data(received)
        events = self.protocol.events_received()
        request = events[0] if events else None
        if not isinstance(request, Request):  # websockets could not parse it: it has answered with an error
            self._flush()
            return
        self.headers = {name.lower(): value for name, value in request.headers.raw_items()}
        self.host = self.headers.get("host", "")
        admission = self.route.admission
        refusal = admission(self.headers) if admission is not None else None
        if refusal is not None:
            response = self.protocol.reject(403, json.dumps(failed(refusal)))
            response.headers["Content-Type"] = "application/json"
            logger.warning("refused a WebSocket upgrade to %s: %s", request.path, refusal)
        else:
            response = self.protocol.accept(request)
        self.protocol.send_response(response)
        self._flush()
        if response.status_code != 101:
            if refusal is None:
                logger.info("refused a WebSocket upgrade to %s: %d", request.path, response.status_code)
            return
        self.edge.sockets.add(self)
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._serve())
        self.ping_timer = loop.call_later(self.route.ping_timeout, self._ping)
        if len(events) > 1:  # frames that came with the request
            self._handle_frames(events[1:])

    async def _serve(self) -> None:
        try:
            await self.route.handler(self)
        except ClientGone:
            pass
        except Exception:
            logger.exception("media socket handler failed")
        finally:
            if not self.closed:
                await self.close(1011, "handler ended without closing")
            self.edge.sockets.discard(self)

    # The handlers' interface (callbridge.edge.websocket.WebSocket).

    async def send(self, message: str | bytes) -> None:
        if self.closed or self.protocol.state is not State.OPEN:
            raise ClientGone(self.dropped)
        if isinstance(message, bytes):
            self.protocol.send_binary(message)
        else:
            self.protocol.send_text(message.encode())
        self._flush()
        if self.drained is not None:
            await asyncio.shield(self.drained)

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        elif not self.transport.is_closing():
            self.transport.close()

    def listen(self, listener: Listener, on_gone: Gone) -> None:
        self.listener, self.on_gone = listener, on_gone
        while self.early and not self.closed:
            self._offer(self.early.popleft())
        if self.gone:
            self._notify_gone()

    def abort(self) -> None:
        """Drop the connection at once (shutdown)."""
        self.closed = True
        self.transport.abort()

    # The transport's callbacks (through Connection).

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol.state is State.OPEN and protocol.current_size is None and not protocol.reader.buffer:
            data = self._whole_frames(data)
            if not data:
                if protocol.state is not State.OPEN:  # a message was refused (invalid UTF-8)
                    self._after_frames()
                return
        protocol.receive_data(data)
        self._handle_frames(protocol.events_received())

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._handle_frames(self.protocol.events_received())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self.close_timer, self.ping_timer, self.send_timer):
            if timer is not None:
                timer.cancel()
        self._notify_gone()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self.drained = loop.create_future()
        timeout = self.route.send_timeout
        self.send_timer = loop.call_later(timeout, self._drop, f"outbound data backed up for {timeout:g} s "
                                          "(the client is not reading)")

    def resume_writing(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # Internals.

    def _whole_frames(self, data: bytes) -> bytes:
        """Deliver the complete, unfragmented, masked text and binary frames at the start of `data`; return the rest.

        This is every 20 ms media message (text JSON; binary PCM on Vonage's socket), and websockets'
        generator-based parser costs several times more per frame than these few checks. Only frames that need
        nothing else from the protocol are taken here: FIN set, no RSV bits (no extension is negotiated), opcode
        text or binary, masked, a 7- or 16-bit length within the size cap, entirely in `data`. Anything else
        (control frames, fragments, partial frames, errors) goes to websockets from a frame boundary, with its
        reader empty, as if it had parsed the frames before it."""
        at, end = 0, len(data)
        limit = self.protocol.max_message_size
        while end - at >= 6 and data[at] in (0x81, 0x82):
            second = data[at + 1]
            if not second & 0x80:  # an unmasked client frame: websockets fails the connection
                break
            length = second & 0x7F
            head = at + 2
            if length == 126:
                length = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif length == 127:
                break
            stop = head + 4 + length
            if stop > end or (limit is not None and length > limit):
                break
            opcode = Opcode.TEXT if data[at] == 0x81 else Opcode.BINARY
            self._deliver(opcode, apply_mask(data[head + 4 : stop], data[head : head + 4]))
            at = stop
            if self.protocol.state is not State.OPEN:  # the message was refused (invalid UTF-8)
                break
        return data[at:] if at else data

    def _handle_frames(self, frames: list[Any]) -> None:
        for frame in frames:
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    self._deliver(opcode, frame.data)
                else:
                    self.fragment_opcode, self.fragments = opcode, [frame.data]
            elif opcode is Opcode.CONT and self.fragment_opcode is not None:
                self.fragments.append(frame.data)
                if frame.fin:
                    self._deliver(self.fragment_opcode, b"".join(self.fragments))
                    self.fragment_opcode, self.fragments = None, []
            elif opcode is Opcode.PONG and self.ping_payload is not None and frame.data == self.ping_payload:
                self._answered()
        self._after_frames()

    def _after_frames(self) -> None:
        self._flush()
        if self.protocol.state is not State.OPEN:
            if self.protocol.close_rcvd is None and self.protocol.close_sent is not None and not self.closed:
                # websockets failed the connection (a protocol violation or a message over the size limit).
                sent = self.protocol.close_sent
                logger.warning("media socket closed with %d: %s", sent.code, sent.reason or "protocol error")
            self._notify_gone()

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        message: str | bytes
        if opcode is Opcode.BINARY:
            message = bytes(data)
        else:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self.protocol.fail(1007, "text message is not valid UTF-8")
                return
        if self.listener is None:
            self.early.append(message)
        elif not self.closed:
            self._offer(message)

    def _offer(self, message: str | bytes) -> None:
        assert self.listener is not None
        try:
            self.listener(message)
        except Exception:  # a bug in the handler: the call cannot go on
            logger.exception("media socket listener failed")
            self.closed = True
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(1011, "internal error")
                self._flush()
            self._notify_gone()

    def _notify_gone(self) -> None:
        """Nothing more will arrive: tell the handler, once (when it listens, if it does not yet)."""
        self.gone = True
        if self.on_gone is not None and not self.gone_told:
            self.gone_told = True
            self.on_gone(self.dropped)

    def _ping(self) -> None:
        """Ping, and give the pong until the next ping is due (a random payload: only a client that read the
        ping can answer it)."""
        if self.protocol.state is not State.OPEN:
            return
        self.ping_payload = os.urandom(4)
        self.protocol.send_ping(self.ping_payload)
        self._flush()
        timeout = self.route.ping_timeout
        self.ping_timer = asyncio.get_running_loop().call_later(timeout, self._drop, f"no pong within {timeout:g} s")

    def _answered(self) -> None:
        assert self.ping_timer is not None
        self.ping_timer.cancel()
        self.ping_payload = None
        self.ping_timer = asyncio.get_running_loop().call_later(self.route.ping_timeout, self._ping)

    def _drop(self, reason: str) -> None:
        """Cut a connection whose client does not answer or does not read: no closing handshake, which it would
        not take part in either (nor in a graceful close, which waits for it to read). connection_lost follows
        and tells the handler why."""
        self.dropped = reason
        self.closed = True
        self.transport.abort()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            else:  # websockets' end-of-stream marker: the closing handshake is over
                self.transport.close()
        if self.protocol.close_expected() and self.close_timer is None and not self.transport.is_closing():
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.abort)


class ClientAddress:
    """ASGI middleware behind the edge: the client's address from the edge's header back into the scope."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            for index, (name, value) in enumerate(headers):
                if name == PEER_HEADER:
                    host, _, port = value.decode("latin1").rpartition(" ")
                    scope = {**scope, "client": (host, int(port) if port.isdigit() else 0),
                             "headers": headers[:index] + headers[index + 1:]}
                    break
        await self.app(scope, receive, send)
