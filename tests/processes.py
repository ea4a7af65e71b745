"""Real processes for the tests: a free loopback port, a redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import IO

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, log: IO[str], args: Sequence[str] = ("--save", "", "--appendonly", "no")
                ) -> subprocess.Popen:
    """A real redis-server on loopback with `args` (by default: nothing persisted), installed by .ci/run
    (apt-get install redis-server); returns once it answers PING."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1"],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # NOAUTH: it answers, with --requirepass
                    return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
