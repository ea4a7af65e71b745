"""The shared state heals: after a Redis outage (whether Redis comes back with its data or empty), after a
Redis restart, and after a worker that dies for good."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import redis.asyncio as redis

from callbridge.sessions.registry import ConcurrencyLimitReached, ConnectionAlreadyExists
from callbridge.sessions.shared import RedisRegistry
from callbridge.simulator import webhook
from tests.integration.clients import BrowserResult, browser_call
from tests.integration.conftest import Server
from tests.processes import free_port, start_redis
from tests.speech import silence

RATE = 8000
LIMIT = 3


def hold(server: Server, call_id: str, seconds: float) -> asyncio.Task[BrowserResult]:
    """A browser call that stays on the line for `seconds`, then hangs up."""
    return asyncio.create_task(browser_call(server.url, call_id, silence(0.1, RATE), until="never", timeout=seconds))


async def calls_reported(server: Server, expected: int, within: float = 10.0) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        for _ in range(int(within / 0.2)):
            ready = await client.get("/readyz")
            if ready.status_code == 200 and ready.json()["calls"] == expected:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never reported {expected} calls (last: {ready.text}):\n{server.logs()[-2000:]}")


async def test_calls_that_end_while_redis_is_down_free_their_slots_when_it_comes_back_with_its_data(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    persisted = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]
    redis_log = open(tmp_path / "redis.log", "w")  # noqa: SIM115 - closed below
    redis_server = start_redis(port, redis_log, persisted)
    server = Server({"REDIS_URL": url, "CONCURRENCY_LIMIT": str(LIMIT), "LOG_FORMAT": "text"}, tmp_path / "server.log")
    try:
        marker = redis.Redis.from_url(url)
        await marker.set("test:persisted", "1")
        await marker.aclose()
        holders = [hold(server, f"before-{i}", 2.0) for i in range(LIMIT)]
        await calls_reported(server, LIMIT)
        redis_server.kill()  # a crash: what it had is on disk
        redis_server.wait(10)
        assert all(result.close_code == 1000 for result in await asyncio.gather(*holders))  # ended meanwhile
        for _ in range(50):
            if server.logs().count("could not free its shared slot") == LIMIT:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the calls' slots were freed with Redis down?\n{server.logs()[-2000:]}")

        redis_server = start_redis(port, redis_log, persisted)
        back = redis.Redis.from_url(url)
        assert await back.get("test:persisted") == b"1", "Redis came back with its data"
        await back.aclose()
        await calls_reported(server, 0)
        after = await asyncio.gather(*(hold(server, f"after-{i}", 1.0) for i in range(LIMIT)))
        assert [result.close_code for result in after] == [1000] * LIMIT, [r.messages for r in after]
        assert not any(result.messages for result in after), "no call was refused"
        assert "Traceback" not in server.logs()
    finally:
        server.stop()
        redis_server.kill()
        redis_server.wait(10)
        redis_log.close()


async def test_after_a_redis_restart_the_first_call_is_admitted_and_the_call_in_progress_counts_again(tmp_path):
    port = free_port()
    redis_log = open(tmp_path / "redis.log", "w")  # noqa: SIM115 - closed below
    redis_server = start_redis(port, redis_log)
    server = Server({"REDIS_URL": f"redis://127.0.0.1:{port}/0", "LOG_FORMAT": "text"}, tmp_path / "server.log")
    try:
        for _ in range(3):  # connections in the pool
            webhook(server.url)
        in_progress = hold(server, "across-the-restart", 6.0)
        await calls_reported(server, 1)
        redis_server.kill()
        redis_server.wait(10)
        redis_server = start_redis(port, redis_log)  # back at once, empty
        for _ in range(3):  # each request on a pooled connection to the Redis that is gone
            webhook(server.url)  # raises if rejected
        await calls_reported(server, 1)  # the call up across the restart is claimed again
        assert (await in_progress).close_code == 1000
        await calls_reported(server, 0)
        assert "webhook for" not in server.logs() and "could not free" not in server.logs(), "nothing refused"
    finally:
        server.stop()
        redis_server.kill()
        redis_server.wait(10)
        redis_log.close()


async def test_a_worker_that_dies_for_good_leaves_the_count_when_its_lease_runs_out(redis_url):
    replica = f"test-{uuid.uuid4().hex[:8]}"
    dead = RedisRegistry(redis_url, replica, f"{replica}/0", limit=1, lease=0.5)
    await dead.start()
    await dead.open("held-by-the-dead", "twilio")
    for task in (dead._listener, dead._heartbeat):  # it dies: nothing renewed, nothing released
        assert task is not None
        task.cancel()
    survivor = RedisRegistry(redis_url, replica, f"{replica}/1", limit=1, lease=0.5)
    await survivor.start()
    try:
        with pytest.raises(ConcurrencyLimitReached):
            await survivor.open("new", "twilio")
        with pytest.raises(ConnectionAlreadyExists):
            await survivor.open("held-by-the-dead", "websocket")
        await asyncio.sleep(1.0)  # two leases
        assert await survivor.count() == 0
        await survivor.open("held-by-the-dead", "websocket")  # its id and its slot are free again
        await asyncio.sleep(1.0)
        assert await survivor.count() == 1, "a live worker's heartbeat keeps its call counted past the lease"
    finally:
        await survivor.stop()
        await dead.redis.aclose()
