"""A per-call token opens one Twilio stream, within CALL_TOKEN_SECONDS: with one process (MemoryRegistry) and
with two workers sharing a Redis (RedisRegistry), where the streams may land on either worker."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callbridge.simulator import start_message, stop_message, webhook
from tests.integration.clients import raw_exchange
from tests.integration.conftest import Server

TOKEN_SECONDS = 4


@pytest.fixture(params=["memory", "redis"])
def server(request, server_factory) -> Server:
    if request.param == "memory":
        return server_factory(call_token_seconds=TOKEN_SECONDS)
    return server_factory(call_token_seconds=TOKEN_SECONDS, workers=2,
                          redis_url=request.getfixturevalue("redis_url"))


def stream_url(server: Server) -> str:
    return server.url.replace("http", "ws") + "/telephone/handler"


def new_stream_sid() -> str:
    return "MZ" + secrets.token_hex(16)


async def test_three_simultaneous_streams_with_one_token_get_one_call(server):
    _, params = webhook(server.url)
    call_sid = params.pop("CallSid")
    sids = [new_stream_sid() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(stream_url(server))) for _ in sids]
        starts = [start_message(sid, call_sid, params) for sid in sids]  # one token, as a captured start's
        await asyncio.gather(*(ws.send(start) for ws, start in zip(sockets, starts, strict=True)))
        refused = []
        for ws in sockets:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 2.0)
            if ws.close_code is not None:
                refused.append((ws.close_code, ws.close_reason))
        assert refused == [(1008, "call token already used: it opens one stream")] * 2
        (admitted,) = [(ws, sid) for ws, sid in zip(sockets, sids, strict=True) if ws.close_code is None]
        ws, sid = admitted
        await ws.send(stop_message(sid, call_sid))
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.wait_closed(), 5.0)
        assert ws.close_code == 1000
    logs = server.logs()
    assert f"call {sid} started" in logs
    assert sum(f"twilio {other}: call token already used" in logs for other in sids if other != sid) == 2


async def test_a_token_replayed_after_its_call_ended_is_refused(server):
    _, params = webhook(server.url)
    call_sid = params.pop("CallSid")
    first = new_stream_sid()
    _, code = await raw_exchange(stream_url(server), [start_message(first, call_sid, params),
                                                      stop_message(first, call_sid)])
    assert code == 1000 and f"call {first} started" in server.logs()
    replay = new_stream_sid()
    async with connect(stream_url(server)) as ws:
        await ws.send(start_message(replay, call_sid, params))
        await asyncio.wait_for(ws.wait_closed(), 5.0)
    assert (ws.close_code, ws.close_reason) == (1008, "call token already used: it opens one stream")
    assert f"call {replay} started" not in server.logs()


async def test_an_expired_token_is_refused(server):
    _, params = webhook(server.url)
    call_sid = params.pop("CallSid")
    await asyncio.sleep(TOKEN_SECONDS + 0.5)
    late = new_stream_sid()
    async with connect(stream_url(server)) as ws:
        await ws.send(start_message(late, call_sid, params))
        await asyncio.wait_for(ws.wait_closed(), 5.0)
    assert ws.close_code == 1008 and ws.close_reason.startswith("call token expired"), ws.close_reason
    assert "call token expired" in server.logs()
