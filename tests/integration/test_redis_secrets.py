"""The Redis password never leaves the process: not in a response, a log line or a start-up error."""

from __future__ import annotations

import json

import httpx
import pytest

from callbridge.simulator import webhook
from tests.integration.clients import raw_exchange
from tests.integration.conftest import Server
from tests.integration.test_api import run_cli
from tests.processes import free_port, start_redis

PASSWORD = "pw-7f3a9c1e"


async def test_an_unreachable_redis_is_named_without_its_password(tmp_path):
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    with open(tmp_path / "redis.log", "w") as redis_log:
        redis = start_redis(port, redis_log, ["--save", "", "--appendonly", "no", "--requirepass", PASSWORD])
        server = Server({"REDIS_URL": url, "LOG_FORMAT": "text"}, tmp_path / "server.log")
        try:
            redis.kill()
            redis.wait(10)
            answers = []
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert f"redis://:***@127.0.0.1:{port}/0" in ready.json()["reason"], "the Redis is still named"
                hook = await client.post("/input_hook", json={"webrtc_id": "elsewhere", "label": "x"})
                updates = await client.get("/updates", params={"webrtc_id": "elsewhere"})
                assert hook.status_code == updates.status_code == 503
                answers += [ready.text, hook.text, updates.text]
            with pytest.raises(RuntimeError, match="call rejected") as rejected:
                webhook(server.url)
            answers.append(str(rejected.value))
            received, code = await raw_exchange(server.url.replace("http", "ws") + "/websocket/offer",
                                                [json.dumps({"event": "start", "websocket_id": "no-redis"})])
            assert code == 1013 and json.loads(received[0])["meta"]["error"] == "service_unavailable"
            answers += received
        finally:
            server.stop()
    logs = server.logs()
    assert "webhook for CA" in logs and "call no-redis refused: cannot use Redis" in logs, "the refusals were logged"
    assert PASSWORD not in logs
    for answer in answers:
        assert PASSWORD not in answer


def test_redis_unreachable_at_start_up_is_named_without_its_password():
    port = free_port()
    result = run_cli(REDIS_URL=f"redis://user:{PASSWORD}@127.0.0.1:{port}/0", PORT=str(free_port()))
    assert result.returncode == 1
    assert f"cannot use Redis at redis://user:***@127.0.0.1:{port}/0" in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("mistyped", [
    f"redis//:{PASSWORD}@127.0.0.1:6379/0",  # no scheme
    f"rediss:/:{PASSWORD}@127.0.0.1:6379/0",
    f"redis://:{PASSWORD}@127.0.0.1:63a79/0",  # a port that is no number
])
def test_a_mistyped_redis_url_stops_start_up_without_showing_its_password(mistyped):
    result = run_cli(REDIS_URL=mistyped)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "***@127.0.0.1" in result.stderr
    assert PASSWORD not in result.stderr and "Traceback" not in result.stderr
