"""WORKERS > 1: several processes serve the same port, each with its own event loop, supervised here.

One event loop runs on one core, and under load it is what runs out first (bench/results/profile.md).
Each worker listens on HOST:PORT with SO_REUSEPORT, so the kernel spreads new connections over them;
what must be shared between them (ids, the limit, set_input and outputs, trickled ICE candidates) goes
through Redis (callbridge.sessions.shared); their metrics through files in a shared directory (callbridge.metrics). The
supervisor only starts workers, passes signals on (SIGTERM drains every worker), restarts a worker that
dies after it was ready and stops everything when one cannot start.

When a worker counts as started: once it says so. Each worker gets the write end of a pipe (`--ready-fd`) and
writes to it once its public port is open (callbridge.serve: the models loaded, Redis reached), the moment
/readyz turns 200. Time since start says nothing: a loaded machine starts a worker in 30 s, a crash may come
after 5.

The policy. The service gives up (stops every worker, exit 1, naming it) only when a worker cannot start at
all: it exits before it was ever ready, at the service's start. That is a crash loop the supervisor can name
and that retrying would not mend: the settings, the port, Redis, the bot or the models do not work, and the
orchestrator (systemd, Kubernetes) restarting the whole service shows it. Once a worker has been ready, it has
proved all of that: when it dies (the OOM killer, a crash in one call, a kill) it is started again at once,
every time, while the other workers' calls go on. If such a restart exits before it is ready (Redis away for
a while, say), it is tried again after a pause that doubles from RESTART_PAUSE_SECONDS up to
MAX_RESTART_PAUSE_SECONDS: stopping would end the calls the other workers hold for a cause that may pass.
Every death is logged at ERROR.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from callbridge.metrics import MULTIPROCESS_DIR
from callbridge.settings import Settings

log = logging.getLogger("callbridge.workers")


#: After a worker that had served fails to start again: the first pause before the next try, and the longest.
RESTART_PAUSE_SECONDS = 1.0
MAX_RESTART_PAUSE_SECONDS = 30.0


@dataclass
class Worker:
    """One worker process and the pipe on which it says it is ready."""

    index: int
    process: subprocess.Popen[bytes]
    ready_pipe: int  # the read end; the worker writes to the other once it serves
    served: bool  # this worker (this process or one before it) has been ready
    failed_starts: int = 0  # starts in a row that exited before they were ready, since it served
    ready: bool = False

    def fileno(self) -> int:
        return self.ready_pipe


def start_worker(index: int, env: dict[str, str], served: bool = False, failed_starts: int = 0) -> Worker:
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-m", "callbridge", "serve", "--worker", str(index),
                                    "--ready-fd", str(write_end)], env=env, pass_fds=(write_end,))
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    log.info("worker %d started (pid %d)", index, process.pid)
    return Worker(index, process, read_end, served, failed_starts)


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
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    workers: dict[int, Worker] = {}
    restarts: dict[int, tuple[float, int]] = {}  # worker index -> (when to start it again, failed starts)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(settings.workers):
        workers[index] = start_worker(index, env)
    failed = False
    while any(worker.process.poll() is None for worker in workers.values()) or (restarts and not stopping):
        _note_ready([worker for worker in workers.values() if not worker.ready and worker.process.poll() is None])
        if stopping:
            continue
        for index, (when, failed_starts) in list(restarts.items()):
            if time.monotonic() >= when:
                del restarts[index]
                os.close(workers[index].ready_pipe)
                workers[index] = start_worker(index, env, served=True, failed_starts=failed_starts)
        for index, worker in list(workers.items()):
            code = worker.process.poll()
            if code is None or index in restarts:
                continue
            mark_process_dead(worker.process.pid, metrics_dir)  # its calls in progress are over
            _note_ready([worker], timeout=0)  # it may have said so just before it died
            if worker.ready:
                log.error("worker %d exited with code %d after it was ready: starting it again", index, code)
                os.close(worker.ready_pipe)
                workers[index] = start_worker(index, env, served=True)
            elif worker.served:
                pause = min(RESTART_PAUSE_SECONDS * 2 ** worker.failed_starts, MAX_RESTART_PAUSE_SECONDS)
                log.error("worker %d exited with code %d before it was ready again (%d failed starts since it "
                          "served): starting it again in %g s", index, code, worker.failed_starts + 1, pause)
                restarts[index] = (time.monotonic() + pause, worker.failed_starts + 1)
            else:
                log.error("worker %d exited with code %d before it was ever ready: it cannot start; stopping the "
                          "others", index, code)
                failed = stopping = True
                for other in workers.values():
                    if other.process.poll() is None:
                        other.process.terminate()
                break
    for worker in workers.values():
        os.close(worker.ready_pipe)
    codes = [worker.process.returncode for worker in workers.values()]
    log.info("all workers stopped (exit codes %s)", codes)
    return 1 if failed or any(codes) else 0


def _note_ready(starting: list[Worker], timeout: float = 0.2) -> None:
    """Wait up to `timeout` for workers still starting to say they are ready; mark those that did. (A pipe
    that ends without a word is one whose worker is exiting: the supervisor's loop sees it exit.)"""
    try:
        readable, _, _ = select.select(starting, [], [], timeout)
    except InterruptedError:  # a signal arrived: the loop looks at what it changed
        return
    for worker in readable:
        if os.read(worker.ready_pipe, 16) and not worker.ready:
            worker.ready = True
            log.info("worker %d is ready", worker.index)
        else:
            time.sleep(timeout)  # the pipe stays readable until the worker is reaped: no busy loop meanwhile
