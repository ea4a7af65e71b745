"""The edge in front of Hypercorn (callbridge.edge.server), spoken to with raw sockets where a client library
would hide what is being checked: routing, client addresses, WebSocket framing corner cases."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import secrets
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from callbridge.simulator import Pause, Speak, WaitForReply
from tests.integration.conftest import Server
from tests.integration.test_phone import HELLO, simulate
from tests.speech import peak_correlation, speech

RATE = 8000


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send a raw request and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def open_raw_websocket(port: int, path: str, *, version: str = "13", receive_buffer: int = 0
                       ) -> tuple[socket.socket, bytes]:
    """A raw socket upgraded to a WebSocket (its receive buffer set small before connecting, if asked)."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes([first, mask_bit | length])
    elif length < 65536:
        header = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each frame the server sends, until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = int.from_bytes(data[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(data[2:10], "big"), 10
            if len(data) < offset + length:
                break
            payload, data = data[offset:offset + length], data[offset + length:]
            yield opcode, payload


def read_close_code(sock: socket.socket) -> int | None:
    """Read server frames until a close frame; its status code (None if the connection just ends)."""
    for opcode, payload in server_frames(sock):
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return None


def read_texts(frames: Iterator[tuple[int, bytes]], count: int) -> list[dict]:
    """The next `count` text messages, as JSON."""
    texts = []
    for opcode, payload in frames:
        if opcode == 0x1:
            texts.append(json.loads(payload))
            if len(texts) == count:
                break
    return texts


def test_http_goes_through_with_connection_close(echo_server):
    response = http_exchange(echo_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower(), "each request on its own connection, so each one is routed"
    assert json.loads(body) == {"status": "ok"}


def test_request_body_and_non_media_paths_reach_the_app(echo_server):
    body = b"From=%2B15550100001&To=%2B15550100002&CallSid=CAedge"
    response = http_exchange(echo_server.port, b"POST /telephone/incoming HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/x-www-form-urlencoded\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert response.startswith(b"HTTP/1.1 200") and b"<Stream" in response
    # A WebSocket upgrade to a path that is no media socket is the app's to answer.
    sock, head = open_raw_websocket(echo_server.port, "/no/such/socket")
    sock.close()
    assert head.startswith(b"HTTP/1.1 404")


def test_the_app_sees_the_clients_address_and_not_a_forged_one(server_factory):
    server = server_factory(twilio_auth_token="edge-secret", public_url="https://edge.example")
    response = http_exchange(server.port, b"POST /telephone/incoming HTTP/1.1\r\nHost: x\r\n"
                             b"X-Callbridge-Peer: 203.0.113.9 4444\r\nContent-Length: 0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 403")
    refused = [line for line in server.logs().splitlines() if "webhook refused" in line]
    assert refused and refused[-1].endswith("(from 127.0.0.1)"), refused


def test_a_bad_handshake_is_refused_with_http(echo_server):
    sock, head = open_raw_websocket(echo_server.port, "/websocket/offer", version="8")
    head += sock.recv(4096)  # the body says what was wrong
    sock.close()
    assert head.startswith(b"HTTP/1.1 400") and b"Sec-WebSocket-Version" in head, head


@pytest.mark.parametrize(("name", "frames", "expected"), [
    ("invalid UTF-8 in a text frame", [frame(0x1, b"\xff\xfe{}")], 1007),
    ("unmasked client frame", [frame(0x1, b'{"event":"stop"}', masked=False)], 1002),
    ("continuation without a start", [frame(0x0, b"{}")], 1002),
    ("message over the hard size cap", [frame(0x1, b"x" * (4 * 65536 + 1))], 1009),
    ("a reserved bit set", [bytes([0xC1]) + frame(0x1, b'{"event":"stop"}')[1:]], 1002),
    ("invalid UTF-8 after a good frame in one segment",
     [frame(0x1, json.dumps({"event": "start", "websocket_id": "utf8"}).encode()) + frame(0x1, b"\xc3\x28")], 1007),
])
def test_framing_errors_close_with_the_fitting_code(echo_server, name, frames, expected):
    sock, head = open_raw_websocket(echo_server.port, "/websocket/offer")
    assert head.startswith(b"HTTP/1.1 101")
    with sock:
        for data in frames:
            sock.sendall(data)
        assert read_close_code(sock) == expected, name
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as probe:
        probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'"calls":0' in probe.recv(65536).replace(b" ", b"")


def test_frames_coalesced_split_or_fragmented_are_read_alike(echo_server):
    """Whole text frames are read by the edge itself (callbridge.edge.server: _whole_frames); several frames
    in one segment, a frame cut into single bytes, fragments and control frames between them must all be read
    exactly as websockets' parser reads them."""
    sock, head = open_raw_websocket(echo_server.port, "/websocket/offer")
    assert head.startswith(b"HTTP/1.1 101")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ping = frame(0x1, b'{"event": "ping"}')
    with sock:
        frames = server_frames(sock)
        start = json.dumps({"event": "start", "websocket_id": "coalesced"}).encode()
        sock.sendall(frame(0x1, start) + ping + ping)  # three messages in one segment
        assert read_texts(frames, 2) == [{"event": "pong"}] * 2
        for byte in ping:  # one message, one byte per segment
            sock.sendall(bytes([byte]))
            time.sleep(0.002)
        assert read_texts(frames, 1) == [{"event": "pong"}]
        sock.sendall(ping + frame(0x9, b"hi") + ping[:5])  # a whole message, a control frame, part of a message
        time.sleep(0.01)
        message = b'{"event": "ping"}'
        sock.sendall(ping[5:] + frame(0x1, message[:7], fin=False) + frame(0x0, message[7:])  # the rest; fragments
                     + frame(0x1, b'{"event": "ping", "pad": "' + b"x" * 300 + b'"}'))  # 16-bit length
        replies = [(opcode, payload) for opcode, payload in (next(frames) for _ in range(5))]
        assert (0xA, b"hi") in replies  # the pong
        assert [json.loads(p) for op, p in replies if op == 0x1] == [{"event": "pong"}] * 4
        sock.sendall(frame(0x1, b'{"event": "stop"}'))
        assert read_close_code(sock) == 1000


async def test_fragmented_messages_and_control_frames_on_a_media_socket(echo_server):
    url = echo_server.url.replace("http", "ws") + "/websocket/offer"
    async with connect(url) as ws:
        start = json.dumps({"event": "start", "websocket_id": "fragments"})
        await ws.send([start[:10], start[10:25], start[25:]])  # one message in three frames
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        await ws.send('{"event": "ping"}')
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer == {"event": "pong"}
        await ws.send('{"event": "stop"}')
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1000


async def test_messages_sent_with_the_upgrade_are_not_lost(echo_server):
    """A client may pipeline its first frames right behind the upgrade request, before the 101 arrives."""
    port = echo_server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    start = json.dumps({"event": "start", "websocket_id": "pipelined"}).encode()
    writer.write(f"GET /websocket/offer HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                 + frame(0x1, start) + frame(0x1, b'{"event": "ping"}'))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    first = await asyncio.wait_for(reader.readexactly(2), 5)
    payload = await reader.readexactly(first[1] & 0x7F)
    assert json.loads(payload) == {"event": "pong"}
    writer.close()


def twilio_webhook_body() -> bytes:
    """The form fields Twilio posts to the incoming-call webhook."""
    return urllib.parse.urlencode({
        "AccountSid": "AC" + secrets.token_hex(16), "ApiVersion": "2010-04-01", "CallSid": "CA" + secrets.token_hex(16),
        "CallStatus": "ringing", "Called": "+15550100002", "Caller": "+15550100001", "Direction": "inbound",
        "From": "+15550100001", "To": "+15550100002"}).encode()


async def keep_alive_webhook(port: int, go: asyncio.Event) -> bytes:
    """Connect, wait for `go`, post the webhook as a keep-alive client and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await go.wait()
    body = twilio_webhook_body()
    writer.write(b"POST /telephone/incoming HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        return await asyncio.wait_for(reader.read(-1), 60)
    finally:
        writer.close()


async def test_a_burst_of_400_webhooks_is_answered_beside_a_call(echo_server):
    """More simultaneous connections than Hypercorn's private socket queues (its default: 100) wait for room
    instead of getting a 503; a call in progress meanwhile stays whole."""
    burst = 400
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * burst:  # this process holds the burst's sockets; the server raises its own limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * burst), hard))
    said = speech(HELLO, RATE)
    call = asyncio.create_task(simulate(echo_server, [Pause(0.3), Speak(said), WaitForReply("heard")]))
    await asyncio.sleep(0.5)  # the caller is speaking
    go = asyncio.Event()
    webhooks = [asyncio.create_task(keep_alive_webhook(echo_server.port, go)) for _ in range(burst)]
    await asyncio.sleep(0.5)  # every connection open
    go.set()
    answers = await asyncio.gather(*webhooks)
    statuses = [answer.split(b" ", 2)[1] if answer else b"closed" for answer in answers]
    assert statuses.count(b"200") == burst, {status: statuses.count(status) for status in set(statuses)}
    assert all(b"<Stream" in answer for answer in answers)
    report = await call
    assert report.close_code == 1000 and len(report.reply_starts) == 1
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert abs(len(report.heard_audio) / RATE - (len(said) / RATE + 0.2)) < 0.15, "the echo is whole"
    assert "cannot reach the HTTP app" not in echo_server.logs()


def chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_not_a_reset(echo_server, framing):
    """Quart refuses a body over MAX_CONTENT_LENGTH (16 MiB) before reading it all; a client that sends all of
    it before reading the answer (as urllib does) must still read the 413."""
    body = b"x" * (32 * 1024 * 1024)  # twice the limit: Hypercorn has answered long before the end
    if framing == "chunked":
        head, payload = b"Transfer-Encoding: chunked", chunked(body, 1 << 20)
    else:
        head, payload = b"Content-Length: %d" % len(body), body
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=10) as sock:
        sock.sendall(b"POST /input_hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n\r\n" % head)
        sock.sendall(payload)  # before the fix: ConnectionResetError, the edge closed on unread data
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.mark.parametrize("first", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /telephone/incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 13\r\n\r\nCallSid=CApip",
    b"POST /input_hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + chunked(b'{"webrtc_id": "nobody", "x": 1}', 7),
], ids=["get", "content-length body", "chunked body"])
def test_a_pipelined_request_leaves_the_first_answered(echo_server, first):
    """The edge passes one request per connection and answers `Connection: close`: what is pipelined behind
    the first request is dropped unanswered (the client sends it again), and the first is answered as alone."""
    alone = http_exchange(echo_server.port, first)
    pipelined = http_exchange(echo_server.port, first + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert pipelined.count(b"HTTP/1.1 ") == 1, pipelined
    status = alone.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 200 ", b"HTTP/1.1 404 ") and pipelined.startswith(status), (alone, pipelined)
    # The same answer; a webhook's call token holds its own expiry, so it is the one part that differs.
    def body(answer: bytes) -> bytes:
        return re.sub(rb'name="token" value="[^"]*"', b"TOKEN", answer.partition(b"\r\n\r\n")[2])

    assert body(pipelined) == body(alone)


@pytest.mark.parametrize("request_head", [
    b"get /healthz HTTP/1.1\r\nHost: x",
    b"get /websocket/offer HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
    b"get /updates?webrtc_id=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
    b"post /telephone/incoming HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\nCallSid=CAlow",
], ids=["plain", "media upgrade", "app upgrade", "with a body"])
def test_a_lower_case_method_is_not_implemented_wherever_it_goes(echo_server, request_head):
    """Methods are case-sensitive (RFC 9110 §9.1): `get` is no GET, whether the path is the edge's or the app's
    (Hypercorn would upper-case it), and the connection is closed after the answer, not kept for more."""
    if b"\r\n\r\n" not in request_head:
        request_head += b"\r\n\r\n"
    answer = http_exchange(echo_server.port, request_head)  # read until the server closes
    assert answer == b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", answer


async def test_sigterm_with_http_requests_open_stops_without_a_traceback(tmp_path):
    """A long `/updates` stream and a request whose body never comes are still open at SIGTERM: they are
    closed, and the service stops cleanly, logging no error."""
    server = Server({"SHUTDOWN_GRACE_SECONDS": "0.5", "LOG_FORMAT": "text"}, tmp_path / "server.log")
    try:
        call = await connect(server.url.replace("http", "ws") + "/websocket/offer")
        await call.send(json.dumps({"event": "start", "websocket_id": "held"}))
        for _ in range(50):
            if "call held started" in server.logs():
                break
            await asyncio.sleep(0.1)
        updates_reader, updates = await asyncio.open_connection("127.0.0.1", server.port)
        updates.write(b"GET /updates?webrtc_id=held HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(updates_reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", server.port)
        stalled.write(b"POST /input_hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
        await asyncio.wait_for(updates_reader.read(-1), 5)  # the stream has ended
        await asyncio.wait_for(stalled_reader.read(-1), 5)  # the stalled request is closed
        for writer in (updates, stalled):
            writer.close()
        await call.close()
    finally:
        server.stop()
    logs = server.logs()
    assert "stopped" in logs
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]
