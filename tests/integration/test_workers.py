"""Several processes, one service: the shared registry on a real redis-server, and WORKERS=2 end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid

import httpx
import numpy as np
import pytest

from callbridge.sessions.registry import (
    ConcurrencyLimitReached,
    ConnectionAlreadyExists,
    ServiceUnavailable,
    UnknownSession,
)
from callbridge.sessions.shared import ANSWER_SECONDS, RedisRegistry
from callbridge.simulator import Pause, Speak, WaitForReply, webhook
from tests.integration.clients import browser_call, raw_exchange
from tests.integration.conftest import Server
from tests.integration.test_api import check_input_hook_and_updates, run_cli
from tests.integration.test_operations import metric_values
from tests.integration.test_phone import HELLO, simulate
from tests.processes import free_port, start_redis
from tests.speech import peak_correlation, silence, speech

RATE = 8000


@pytest.fixture
async def pair(redis_url):
    """Two workers of one replica (as two processes would see Redis), each with its own local registry."""
    replica = f"test-{uuid.uuid4().hex[:8]}"
    workers = [RedisRegistry(redis_url, replica, f"{replica}/{i}", limit=2) for i in range(2)]
    for worker in workers:
        await worker.start()
    yield workers
    for worker in workers:
        await worker.stop()


async def test_ids_and_the_limit_are_shared(pair):
    a, b = pair
    await a.open("a1", "twilio")
    await b.open("b1", "twilio")
    with pytest.raises(ConcurrencyLimitReached):
        await a.open("a2", "twilio")
    with pytest.raises(ConnectionAlreadyExists):
        await b.open("b1", "websocket")
    assert await a.count() == await b.count() == 2
    await a.close("a1")
    await b.open("a1", "twilio")  # the freed id and slot, now taken by the other worker
    with pytest.raises(ConnectionAlreadyExists):
        await a.open("a1", "twilio")


async def test_commands_reach_the_worker_holding_the_call(pair):
    a, b = pair
    session = await a.open("held-by-a", "websocket")
    await b.set_input("held-by-a", 0.25, "slow")
    assert await session.take_input(timeout=5) == (0.25, "slow")
    got: list = []

    async def note(call_id: str, data: object) -> None:
        got.append((call_id, data))

    a.on_command("ice", note)
    await b.send_command("held-by-a", "ice", {"candidate": ""})
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [("held-by-a", {"candidate": ""})]
    with pytest.raises(UnknownSession):
        await b.send_command("nobody", "input", [1])


async def test_outputs_stream_to_other_workers_in_order_and_end_with_the_call(pair):
    a, b = pair
    session = await a.open("talker", "websocket")
    stream = await b.output_stream("talker")  # subscribed now: nothing published from here on is missed
    session.publish_output(({"n": 1}, "one"))
    session.publish_output((np.float32(2.5), "two"))  # numpy values cross as JSON
    await a.close("talker")
    received = [outputs async for outputs in stream]
    assert received == [({"n": 1}, "one"), (2.5, "two")]
    with pytest.raises(UnknownSession):
        await b.output_stream("talker")


async def test_a_restarted_worker_frees_what_it_held_before_it_crashed(redis_url):
    replica = f"test-{uuid.uuid4().hex[:8]}"
    crashed = RedisRegistry(redis_url, replica, f"{replica}/0", limit=1)
    await crashed.start()
    await crashed.open("left-over", "twilio")
    crashed._listener.cancel()  # dies without releasing anything
    other = RedisRegistry(redis_url, replica, f"{replica}/1", limit=1)
    await other.start()
    with pytest.raises(ConcurrencyLimitReached):
        await other.open("new", "twilio")
    restarted = RedisRegistry(redis_url, replica, f"{replica}/0", limit=1)
    await restarted.start()
    assert await other.count() == 0
    await other.open("left-over", "twilio")
    for worker in (restarted, other):
        await worker.stop()
    await crashed.redis.aclose()


async def test_a_redis_that_never_answers_is_reported_not_waited_for():
    """A Redis cut off mid-connection (no reset, no answer) must not hold a webhook or a probe."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    worker = RedisRegistry(f"redis://127.0.0.1:{port}/0", "mute", "mute/0", limit=1)
    loop = asyncio.get_running_loop()
    try:
        requests = (worker.count, lambda: worker.open("x", "twilio"), lambda: worker.send_command("x", "input", []))
        for request in requests:
            started = loop.time()
            with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}.*no answer in 1 s"):
                await request()
            assert loop.time() - started < ANSWER_SECONDS + 1.0
        assert accepted, "the requests did reach the listener"
    finally:
        await worker.redis.aclose()
        for writer in accepted:
            writer.close()
        listener.close()


async def test_losing_redis_refuses_new_calls_clearly_and_spares_calls_in_progress(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_log = open(tmp_path / "redis.log", "w")  # noqa: SIM115 - closed below
    redis = start_redis(port, redis_log)
    server = Server({"WORKERS": "2", "REDIS_URL": url, "BOT": "tests.sample_bots:labeller", "LOG_FORMAT": "text"},
                    tmp_path / "server.log")
    try:
        await both_workers_listening(server)
        said = speech(HELLO, RATE)
        in_progress = asyncio.create_task(browser_call(
            server.url, "up-before", np.concatenate([silence(2.0, RATE), said, silence(1.0, RATE)]), pace=0.02,
            timeout=10))
        await asyncio.sleep(0.5)
        hook = httpx.post(server.url + "/input_hook", json={"webrtc_id": "up-before", "label": "kept"})
        assert hook.status_code == 200
        await asyncio.sleep(0.5)
        redis.kill()  # a crash: nothing said to the clients
        redis.wait(10)

        browser_url = server.url.replace("http", "ws") + "/websocket/offer"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for i in range(6):  # a new connection each: whichever worker answers
                ready = await client.get("/readyz", headers={"Connection": "close"})
                assert ready.status_code == 503
                assert ready.json()["status"] == "unavailable" and url in ready.json()["reason"]
                with pytest.raises(RuntimeError, match="call rejected"):
                    webhook(server.url)
                received, code = await raw_exchange(browser_url, [json.dumps({"event": "start",
                                                                              "websocket_id": f"down-{i}"})])
                assert json.loads(received[0])["meta"]["error"] == "service_unavailable" and code == 1013
                hook = await client.post("/input_hook", json={"webrtc_id": "elsewhere", "label": "x"},
                                         headers={"Connection": "close"})
                assert hook.status_code == 503 and "cannot reach" in hook.json()["meta"]["error"]

        result = await in_progress  # the call that was up when Redis went away goes on to the end
        assert result.close_code == 1000 and "playback_finished" in result.logs
        assert peak_correlation(result.reply, said) > 0.9
        assert [m["data"][0]["label"] for m in result.messages if m["type"] == "fetch_output"] == ["kept"]

        redis = start_redis(port, redis_log)  # back, empty
        for _ in range(100):
            if all(httpx.get(server.url + "/readyz", headers={"Connection": "close"}).status_code == 200
                   for _ in range(6)):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("/readyz did not recover with Redis")
        # Each worker listens for commands again: inputs and outputs cross workers as before.
        await check_input_hook_and_updates(server, "after-redis")
        logs = server.logs()
        assert worker_of(server, "shared registry: command channel back") == {"0", "1"}
        assert "could not free its shared slot" in logs
        assert "Traceback" not in logs
    finally:
        server.stop()
        redis.kill()
        redis.wait(10)
        redis_log.close()


@pytest.fixture(scope="module")
def two_workers(server_factory, redis_url):
    return server_factory(workers=2, redis_url=redis_url, concurrency_limit=2)


def worker_of(server: Server, pattern: str) -> set[str]:
    return set(re.findall(r"\[worker (\d)\] [\w.]+: " + pattern, server.logs()))


async def both_workers_listening(server: Server) -> None:
    """Webhooks until each of the two workers has taken one (the server counts as up once one listens)."""
    for _ in range(100):
        webhook(server.url)
        if worker_of(server, "webhook") == {"0", "1"}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"one worker never took a webhook:\n{server.logs()[-3000:]}")


async def test_two_workers_share_the_port_and_each_call_works_wherever_it_lands(two_workers):
    said = speech(HELLO, RATE)
    for _ in range(6):  # each call's webhook and stream land on either worker
        report = await simulate(two_workers, [Pause(0.3), Speak(said), WaitForReply("heard")])
        assert peak_correlation(report.heard_audio, said) > 0.9
    for _ in range(20):
        webhook(two_workers.url)
    assert worker_of(two_workers, "webhook") == {"0", "1"}, "the kernel spread connections over both workers"


async def test_the_limit_holds_over_both_workers(two_workers):
    browser_url = two_workers.url.replace("http", "ws") + "/websocket/offer"
    holders = [asyncio.create_task(browser_call(two_workers.url, f"holder-{i}", silence(0.1, RATE), until="never",
                                                timeout=4.0)) for i in range(2)]
    await asyncio.sleep(1.0)
    expected = {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
    for i in range(4):  # whichever worker takes it, the replica is full
        received, code = await raw_exchange(browser_url, [json.dumps({"event": "start", "websocket_id": f"x{i}"})])
        assert json.loads(received[0]) == expected and code == 1013
    readiness = {httpx.get(two_workers.url + "/readyz").json()["calls"] for _ in range(6)}
    assert readiness == {2}, "every worker counts the replica's calls"
    with pytest.raises(RuntimeError, match="rejected"):
        webhook(two_workers.url)
    await asyncio.gather(*holders)
    for _ in range(30):
        if httpx.get(two_workers.url + "/readyz").json()["calls"] == 0:
            break
        await asyncio.sleep(0.1)
    received, code = await raw_exchange(browser_url, [json.dumps({"event": "start", "websocket_id": "after"}),
                                                      json.dumps({"event": "stop"})])
    assert code == 1000


async def test_inputs_and_outputs_reach_a_call_on_another_worker(server_factory, redis_url):
    server = server_factory(workers=2, redis_url=redis_url, bot="tests.sample_bots:labeller")
    await check_input_hook_and_updates(server, "across-workers")
    assert worker_of(server, "call across-workers started") != set(), "the call ran in one of the workers"


async def test_metrics_add_up_every_worker_whichever_one_is_scraped(server_factory, redis_url):
    """A scrape reaches one worker (the kernel picks): each must serve the replica's totals, not its own."""
    server = server_factory(workers=2, redis_url=redis_url, concurrency_limit=10, log_format="text")
    await both_workers_listening(server)
    said = speech(HELLO, RATE)
    reports = await asyncio.gather(*(simulate(server, [Pause(0.3), Speak(said), WaitForReply("heard")])
                                     for _ in range(8)))
    assert all(len(report.reply_starts) == 1 for report in reports)
    assert worker_of(server, r"call \S+ started") == {"0", "1"}, "calls landed on both workers"
    twilio = (("transport", "twilio"),)
    holder = asyncio.create_task(simulate(server, [Pause(2.5)]))
    await asyncio.sleep(1.0)
    during = [metric_values(httpx.get(server.url + "/metrics").text) for _ in range(8)]  # a connection each
    await holder
    after = [metric_values(httpx.get(server.url + "/metrics").text) for _ in range(8)]
    for scrape in during:
        assert scrape[("callbridge_calls_total", twilio)] == 9
        assert scrape[("callbridge_calls_in_progress", twilio)] == 1
    for scrape in after:
        assert scrape[("callbridge_calls_total", twilio)] == 9
        assert scrape[("callbridge_calls_in_progress", twilio)] == 0
        assert scrape[("callbridge_turn_latency_seconds_count", ())] == 8


async def test_two_services_on_one_machine_keep_their_calls_apart(server_factory, redis_url):
    """Same host, same Redis, different ports: each has its own limit and its own worker names."""
    first, second = (server_factory(redis_url=redis_url, concurrency_limit=1, log_format="text", bot=bot)
                     for bot in ("echo", "tests.sample_bots:labeller"))  # two distinct configurations
    holder = asyncio.create_task(browser_call(first.url, "held-on-first", silence(0.1, RATE), until="never",
                                              timeout=4.0))
    await asyncio.sleep(1.0)
    assert httpx.get(first.url + "/readyz").json()["calls"] == 1
    assert httpx.get(second.url + "/readyz").json()["calls"] == 0, "the other service's call is not ours"
    webhook(second.url)  # not rejected: the second service's one slot is free
    with pytest.raises(RuntimeError, match="rejected"):
        webhook(first.url)
    await holder


async def test_a_worker_that_dies_mid_call_is_replaced_and_its_call_leaves_the_counts(tmp_path, redis_url):
    server = Server({"WORKERS": "2", "REDIS_URL": redis_url, "LOG_FORMAT": "text", "CONCURRENCY_LIMIT": "10"},
                    tmp_path / "workers.log")
    try:
        await both_workers_listening(server)  # both ready: a worker dying now is restarted, however soon
        doomed = asyncio.create_task(browser_call(server.url, "doomed", silence(0.1, RATE), until="never",
                                                  timeout=10.0))
        await asyncio.sleep(1.0)
        (index,) = worker_of(server, "call doomed started")
        pid = int(re.findall(rf"worker {index} started \(pid (\d+)\)", server.logs())[-1])
        websocket = (("transport", "websocket"),)
        assert metric_values(httpx.get(server.url + "/metrics").text)[("callbridge_calls_in_progress", websocket)] == 1
        os.kill(pid, signal.SIGKILL)
        result = await doomed
        assert result.close_code not in (None, 1000), "the socket died with its worker"

        for _ in range(150):  # restarted, and both workers answer again
            logs = server.logs()
            if f"worker {index} exited with code -9 after it was ready: starting it again" in logs and len(
                    re.findall(rf"\[worker {index}\] callbridge: serving on", logs)) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"worker {index} was not restarted:\n{server.logs()[-3000:]}")
        for _ in range(8):  # whichever worker answers
            scrape = metric_values(httpx.get(server.url + "/metrics", headers={"Connection": "close"}).text)
            # No live process has a websocket call: the series is gone or 0.
            assert scrape.get(("callbridge_calls_in_progress", websocket), 0) == 0, "the dead worker's call is over"
            assert scrape[("callbridge_calls_total", websocket)] == 1, "what it did still counts"
            assert httpx.get(server.url + "/readyz", headers={"Connection": "close"}).json()["calls"] == 0
        said = speech(HELLO, RATE)
        for _ in range(4):
            report = await simulate(server, [Pause(0.3), Speak(said), WaitForReply("heard")])
            assert peak_correlation(report.heard_audio, said) > 0.9
    finally:
        server.stop()


def latest_pid(server: Server, index: int) -> int:
    return int(re.findall(rf"worker {index} started \(pid (\d+)\)", server.logs())[-1])


async def serve_a_call_on(server: Server, index: int, name: str) -> None:
    """Short browser calls until one lands on worker `index` (the kernel spreads connections)."""
    for attempt in range(60):
        call_id = f"{name}-{attempt}"
        await browser_call(server.url, call_id, silence(0.1, RATE), until="never", timeout=0.5)
        if worker_of(server, f"call {call_id} started") == {str(index)}:
            return
    raise AssertionError(f"no call landed on worker {index}")


async def wait_until_serving(server: Server, index: int, times: int) -> None:
    """Until worker `index` has opened the port `times` times (started, then restarted)."""
    for _ in range(300):
        if server.process.poll() is not None:
            raise AssertionError(f"the service stopped:\n{server.logs()[-3000:]}")
        if len(re.findall(rf"\[worker {index}\] callbridge: serving on", server.logs())) >= times:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {index} did not serve {times} times:\n{server.logs()[-3000:]}")


async def test_a_worker_killed_after_serving_is_restarted_every_time(tmp_path, redis_url):
    """Killed twice, seconds after it started and served calls each time, a worker is started again both times
    (having been ready, it is not taken for one that cannot start) and the service goes on answering calls."""
    server = Server({"WORKERS": "2", "REDIS_URL": redis_url, "LOG_FORMAT": "text", "CONCURRENCY_LIMIT": "10"},
                    tmp_path / "workers.log")
    said = speech(HELLO, RATE)
    try:
        await both_workers_listening(server)
        index = 1
        for kill in (1, 2):
            await serve_a_call_on(server, index, f"served-{kill}")
            os.kill(latest_pid(server, index), signal.SIGKILL)
            await wait_until_serving(server, index, kill + 1)
            assert server.logs().count(f"worker {index} exited with code -9 after it was ready: starting it again"
                                       ) == kill
        for _ in range(4):  # whichever worker takes each call
            report = await simulate(server, [Pause(0.3), Speak(said), WaitForReply("heard")])
            assert peak_correlation(report.heard_audio, said) > 0.9
        await serve_a_call_on(server, index, "after")  # the twice restarted worker serves too
        assert server.process.poll() is None
    finally:
        server.stop()


async def test_a_worker_that_cannot_start_again_is_retried_until_it_can(tmp_path):
    """A worker that served dies while Redis is away: its restarts fail (no Redis) and are tried again after a
    pause, the other worker keeps serving, and once Redis is back the worker starts and serves again."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_log = open(tmp_path / "redis.log", "w")  # noqa: SIM115 - closed below
    redis = start_redis(port, redis_log)
    server = Server({"WORKERS": "2", "REDIS_URL": url, "LOG_FORMAT": "text"}, tmp_path / "server.log")
    try:
        await both_workers_listening(server)
        redis.kill()
        redis.wait(10)
        os.kill(latest_pid(server, 1), signal.SIGKILL)
        for _ in range(200):  # two failed starts, each a second or two apart
            if server.logs().count("worker 1 exited with code 1 before it was ready again") >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"worker 1 was not tried again:\n{server.logs()[-3000:]}")
        assert server.process.poll() is None, "the service goes on"
        for _ in range(4):  # the other worker still answers
            assert httpx.get(server.url + "/healthz", headers={"Connection": "close"}).status_code == 200
        redis = start_redis(port, redis_log)
        await wait_until_serving(server, 1, 2)
        await serve_a_call_on(server, 1, "back")
    finally:
        server.stop()
        redis.kill()
        redis.wait(10)
        redis_log.close()


def test_workers_need_redis():
    result = run_cli(WORKERS="2")
    assert result.returncode == 2 and "REDIS_URL" in result.stderr


def test_a_worker_that_cannot_start_stops_the_service(tmp_path):
    result = run_cli(WORKERS="2", REDIS_URL="redis://127.0.0.1:9/0", PORT=str(free_port()))
    assert result.returncode == 1
    assert "cannot use Redis at redis://127.0.0.1:9/0" in result.stderr
    assert re.search(r"worker \d exited with code 1 before it was ever ready: it cannot start; stopping the others",
                     result.stderr), result.stderr


async def test_sigterm_drains_every_worker(tmp_path, redis_url):
    server = Server({"WORKERS": "2", "REDIS_URL": redis_url}, tmp_path / "workers.log")
    await both_workers_listening(server)  # the server is up once one listens; the other may still be starting
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    server.log.close()
    logs = server.logs()
    assert worker_of(server, "SIGTERM received") == {"0", "1"}
    assert "all workers stopped (exit codes [0, 0])" in logs
