"""The edge's request-head routing and rewriting (callbridge.edge.server), without sockets."""

from __future__ import annotations

import pytest

from callbridge.edge.server import media_upgrade_path, with_peer


@pytest.mark.parametrize(("head", "path"), [
    (b"GET /telephone/handler HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade", "/telephone/handler"),
    (b"GET /websocket/offer?x=1 HTTP/1.1\r\nupgrade:  WebSocket \r\nconnection: upgrade", "/websocket/offer"),
    (b"GET /telephone/handler HTTP/1.1\r\nHost: x", None),  # no upgrade: plain HTTP
    (b"POST /telephone/handler HTTP/1.1\r\nUpgrade: websocket", None),
    (b"GET /x HTTP/1.1\r\nUpgrade: h2c", None),
    (b"\x16\x03\x01\x02\x00garbage", None),  # a TLS hello, or anything else that is not HTTP
    (b"GET /x HTTP/2.0\r\nUpgrade: websocket", None),
])
def test_media_upgrade_path(head, path):
    assert media_upgrade_path(head) == path


def test_with_peer_replaces_a_forged_peer_header_and_asks_for_close():
    head = b"POST /telephone/incoming HTTP/1.1\r\nHost: x\r\nX-Callbridge-Peer: 203.0.113.9 1\r\nContent-Length: 3"
    rewritten = with_peer(head, ("127.0.0.1", 5555))
    lines = rewritten.split(b"\r\n")
    assert lines[0] == b"POST /telephone/incoming HTTP/1.1"
    assert rewritten.endswith(b"\r\n\r\n")
    assert [line for line in lines if line.lower().startswith(b"x-callbridge-peer")] == [
        b"x-callbridge-peer: 127.0.0.1 5555"]
    assert b"connection: close" in lines and b"Content-Length: 3" in lines


def test_with_peer_without_an_address_adds_no_peer():
    assert with_peer(b"GET / HTTP/1.1\r\nHost: x", None) == b"GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"
