"""Real callbridge servers (`python -m callbridge`) on loopback, one per distinct configuration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "INFO", "BOT": "echo",
                    **env}
        full_env = {k: v.replace("{port}", str(self.port)) for k, v in full_env.items()}
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "callbridge"], cwd=ROOT, env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready:\n{log_path.read_text()}")

    def logs(self) -> str:
        return self.log_path.read_text()

    async def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        """Until `text` is in the log: a line written as a call ends may come after the caller saw the close."""
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            assert time.monotonic() < deadline, f"{text!r} not in the server log:\n{self.logs()[-3000:]}"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory) -> Iterator[Callable[..., Server]]:
    servers: dict[tuple, Server] = {}

    def make(**env: str) -> Server:
        key = tuple(sorted(env.items()))
        if key not in servers:
            log = tmp_path_factory.mktemp("server") / "server.log"
            servers[key] = Server({k.upper(): str(v) for k, v in env.items()}, log)
        return servers[key]

    yield make
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def echo_server(server_factory) -> Server:
    return server_factory(concurrency_limit=20)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    with open(tmp_path_factory.mktemp("redis") / "redis.log", "w") as log:
        process = start_redis(port, log)
        yield f"redis://127.0.0.1:{port}/0"
        process.terminate()
        process.wait(10)
