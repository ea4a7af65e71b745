"""Start, watch and stop the servers under test; read their CPU time and memory from /proc.

A server runs as one process started here (no shell in between), so /proc/<pid> is the server itself,
all its threads included. `ProcSampler` reads it every 0.2 s while a load runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server under test, and how a caller must read its replies."""

    name: str
    command: tuple[str, ...]  # `{port}` is replaced by the port
    env: dict[str, str]
    ready_path: str  # answers 200 once the server accepts calls
    reply_end: str  # "mark" or "gap", see bench.caller
    expects_clear: bool
    silence_ms: int  # the quiet the server needs before it ends a turn: the latency criterion's base
    cwd: Path = ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all threads (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat


def status(pid: int) -> dict[str, int]:
    """VmRSS (bytes) and Threads from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss"] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out["threads"] = int(value)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to see what else ran during a load."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICKS


class Server:
    def __init__(self, spec: ServerSpec, log_path: Path, start_timeout: float = 120.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        command = [part.replace("{port}", str(self.port)) for part in spec.command]
        env = {**os.environ, **{k: v.replace("{port}", str(self.port)) for k, v in spec.env.items()}}
        started = time.monotonic()
        self.process = subprocess.Popen(command, cwd=spec.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        try:
            self.cold_start = self._wait_ready(started, start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, started: float, timeout: float) -> float:
        """Seconds from process start until the server answers its ready path."""
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + self.spec.ready_path, timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} not ready after {timeout:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@dataclass
class ProcSample:
    t: float
    cpu: float
    rss: int
    threads: int
    machine_busy: float


@dataclass
class ProcSampler:
    """Samples a process's CPU time, RSS and thread count every `interval` seconds in a thread."""

    pid: int
    interval: float = 0.2
    samples: list[ProcSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> ProcSample:
        st = status(self.pid)
        return ProcSample(time.time(), cpu_seconds(self.pid), st.get("rss", 0), st.get("threads", 0),
                          machine_busy_seconds())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            self.samples.append(self.sample())
