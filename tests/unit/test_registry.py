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


def test_one_limit_for_every_transport_and_unique_ids():
    registry = MemoryRegistry(limit=2)
    registry.open("a", "twilio")
    with pytest.raises(ConnectionAlreadyExists) as duplicate:
        registry.open("a", "websocket")
    assert duplicate.value.body() == {"status": "failed", "meta": {"error": "connection_already_exists"}}
    registry.open("b", "webrtc")
    with pytest.raises(ConcurrencyLimitReached) as full:
        registry.open("c", "websocket")
    assert full.value.body() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
    assert (registry.count(), registry.count("twilio"), registry.count("websocket")) == (2, 1, 0)
    registry.close("a")
    registry.close("a")  # closing twice is harmless
    registry.open("c", "websocket")
    assert registry.count() == 2


def test_unknown_ids_are_refused():
    registry = MemoryRegistry(limit=1)
    with pytest.raises(UnknownSession):
        registry.set_input("ghost", 1)
    with pytest.raises(UnknownSession):
        registry.fetch_latest_output("ghost")
    with pytest.raises(UnknownSession):
        registry.output_stream("ghost")


async def test_output_stream_wakes_per_output_in_order_and_ends_with_the_call():
    registry = MemoryRegistry(limit=1)
    session = registry.open("a", "websocket")
    early = registry.output_stream("a")  # subscribed now, before anything is published
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
    assert registry.fetch_latest_output("a") == ("two", 2)
    registry.close("a")
    await asyncio.wait_for(task, 1)
    assert collected == [("one",), ("two", 2)]
    assert [o async for o in session.output_stream()] == [], "a stream of an ended call ends at once"


async def test_take_input_prefers_fresh_input_and_waits_only_when_there_is_none():
    session = MemoryRegistry(limit=1).open("a", "websocket")
    session.set_input("x")
    assert session.has_fresh_input
    assert await session.take_input(timeout=5) == ("x",)
    assert not session.has_fresh_input
    assert await session.take_input(timeout=0.01) == ("x",), "without a fresh input the last one is used"
    waiter = asyncio.create_task(session.take_input(timeout=5))
    await asyncio.sleep(0)
    session.set_input("y", 2)
    assert await asyncio.wait_for(waiter, 1) == ("y", 2)
