"""WORKERS > 1: several processes serve the same port, each with its own event loop, supervised here.

One event loop runs on one core, and under load it is what runs out first (bench/results/profile.md).
Each worker listens on HOST:PORT with SO_REUSEPORT, so the kernel spreads new connections over them;
what must be shared between them (ids, the limit, set_input and outputs, trickled ICE candidates) goes
through Redis (callbridge.sessions.shared); their metrics through files in a shared directory (callbridge.metrics). The
supervisor only starts workers, passes signals on (SIGTERM drains every worker), restarts a worker that
dies mid-run and stops everything when one cannot start.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from callbridge.metrics import MULTIPROCESS_DIR
from callbridge.settings import Settings

log = logging.getLogger("callbridge.workers")

#: A worker that exits sooner than this after starting could not start (port taken, Redis unreachable, ...):
#: restarting it would only fail again, so the supervisor stops.
START_GRACE_SECONDS = 20.0


def supervise(settings: Settings) -> int:
    env = {**os.environ, "HOST": settings.host, "PORT": str(settings.port)}
    if not settings.call_token_secret and not settings.twilio_auth_token:
        # The webhook and the stream it announces may reach different workers: they must share the secret.
        env["CALL_TOKEN_SECRET"] = secrets.token_hex(32)
    given = env.get(MULTIPROCESS_DIR)
    metrics_dir = env[MULTIPROCESS_DIR] = given or tempfile.mkdtemp(prefix="callbridge-metrics-")
    for stale in Path(metrics_dir).glob("*.db"):  # start from zero, as one process does: no earlier run's values
        stale.unlink()
    try:
        return _run_workers(settings, env, metrics_dir)
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_workers(settings: Settings, env: dict[str, str], metrics_dir: str) -> int:
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        log.info("%s received: passing it to %d workers", signal.Signals(signum).name, len(workers))
        stopping = True
        for process, _ in workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    def start(index: int) -> tuple[subprocess.Popen[bytes], float]:
        process = subprocess.Popen([sys.executable, "-m", "callbridge", "serve", "--worker", str(index)], env=env)
        log.info("worker %d started (pid %d)", index, process.pid)
        return process, time.monotonic()

    workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(settings.workers):
        workers[index] = start(index)
    failed = False
    while any(process.poll() is None for process, _ in workers.values()):
        time.sleep(0.2)
        if stopping:
            continue
        for index, (process, started) in list(workers.items()):
            code = process.poll()
            if code is None:
                continue
            mark_process_dead(process.pid, metrics_dir)  # its calls in progress are over
            if time.monotonic() - started < START_GRACE_SECONDS:
                log.error("worker %d exited with code %d while starting: stopping the others", index, code)
                failed = stopping = True
                for other, _ in workers.values():
                    if other.poll() is None:
                        other.terminate()
                break
            log.error("worker %d exited with code %d: starting it again", index, code)
            workers[index] = start(index)
    codes = [process.returncode for process, _ in workers.values()]
    log.info("all workers stopped (exit codes %s)", codes)
    return 1 if failed or any(codes) else 0
