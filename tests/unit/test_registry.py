"""The in-process session registry."""

from __future__ import annotations

import asyncio

import pytest

from callbridge.sessions.registry import (
    ConcurrencyLimitReached,
    ConnectionAlreadyExists,
    MemoryRegistry,
    UnknownSession,
)


async def test_one_limit_for_every_transport_and_unique_ids():
    registry = MemoryRegistry(limit=2)
    await registry.open("a", "twilio")
    with pytest.raises(ConnectionAlreadyExists) as duplicate:
        await registry.open("a", "websocket")
    assert duplicate.value.body() == {"status": "failed", "meta": {"error": "connection_already_exists"}}
    await registry.open("b", "webrtc")
    with pytest.raises(ConcurrencyLimitReached) as full:
        await registry.open("c", "websocket")
    assert full.value.body() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
    assert await registry.count() == 2
    await registry.close("a")
    await registry.close("a")  # closing twice is harmless
    await registry.open("c", "websocket")
    assert await registry.count() == 2


async def test_unknown_ids_are_refused():
    registry = MemoryRegistry(limit=1)
    with pytest.raises(UnknownSession):
        await registry.set_input("ghost", 1)
    with pytest.raises(UnknownSession):
        await registry.fetch_latest_output("ghost")
    with pytest.raises(UnknownSession):
        await registry.output_stream("ghost")
    with pytest.raises(UnknownSession):
        await registry.send_command("ghost", "ice", {})


async def test_commands_run_where_the_call_is():
    registry = MemoryRegistry(limit=1)
    await registry.open("a", "webrtc")
    got: list = []

    async def note(call_id: str, data: object) -> None:
        got.append((call_id, data))

    registry.on_command("ice", note)
    await registry.send_command("a", "ice", {"candidate": ""})
    assert got == [("a", {"candidate": ""})]


async def test_output_stream_wakes_per_output_in_order_and_ends_with_the_call():
    registry = MemoryRegistry(limit=1)
    session = await registry.open("a", "websocket")
    early = await registry.output_stream("a")  # subscribed now, before anything is published
    session.publish_output(("one",))
    collected: list = []

    async def consume() -> None:
        async for outputs in early:
            collected.append(outputs)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    session.publish_output(("two", 2))
    await asyncio.sleep(0)
    assert collected == [("one",), ("two", 2)]
    assert await registry.fetch_latest_output("a") == ("two", 2)
    await registry.close("a")
    await asyncio.wait_for(task, 1)
    assert collected == [("one",), ("two", 2)]
    assert [o async for o in session.output_stream()] == [], "a stream of an ended call ends at once"


async def test_take_input_prefers_fresh_input_and_waits_only_when_there_is_none():
    session = await MemoryRegistry(limit=1).open("a", "websocket")
    session.set_input("x")
    assert session.has_fresh_input
    assert await session.take_input(timeout=5) == ("x",)
    assert not session.has_fresh_input
    assert await session.take_input(timeout=0.01) == ("x",), "without a fresh input the last one is used"
    waiter = asyncio.create_task(session.take_input(timeout=5))
    await asyncio.sleep(0)
    session.set_input("y", 2)
    assert await asyncio.wait_for(waiter, 1) == ("y", 2)


async def test_a_key_is_claimed_once_until_its_time_is_up():
    registry = MemoryRegistry(limit=1)
    assert await registry.claim_once("token-a", 0.2)
    assert not await registry.claim_once("token-a", 0.2), "claimed already"
    assert await registry.claim_once("token-b", 5.0), "another key is its own"
    await asyncio.sleep(0.3)
    assert await registry.claim_once("token-a", 0.2), "its claim lapsed with its time"
    assert not await registry.claim_once("token-b", 5.0)
