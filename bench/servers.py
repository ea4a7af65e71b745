"""Start, watch and stop the servers under test; read their CPU time and memory from /proc.

A server is the process started here (no shell in between) and every process under it (callbridge with
WORKERS > 1 is a supervisor and its workers), plus any companion process it needs (the Redis its workers
share): CPU and memory are summed over all of them. `ProcSampler` reads them every 0.2 s while a load runs.
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
    companions: tuple[int, ...] = ()  # processes the server needs, counted as part of it (its Redis)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(roots: list[int]) -> list[int]:
    """The root processes and all their descendants that are alive now."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found = [pid for pid in roots if pid in parents]
    for pid in found:  # grows while it is walked: breadth first
        found.extend(child for child, parent in parents.items() if parent == pid and child not in found)
    return found


def cpu_seconds(*roots: int) -> float:
    """User + system CPU time of the processes and their descendants, all threads (/proc/<pid>/stat)."""
    total = 0.0
    for pid in family(list(roots)):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat
    return total


def status(*roots: int) -> dict[str, int]:
    """VmRSS (bytes) and Threads from /proc/<pid>/status, summed over the processes and their descendants."""
    out = {"rss": 0, "threads": 0}
    for pid in family(list(roots)):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss"] += int(value.split()[0]) * 1024
                elif key == "Threads":
                    out["threads"] += int(value)
    return out


def _cpu_line() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to see what else ran during a load; time the
    hypervisor gave to other guests (steal) is not counted."""
    values = _cpu_line()
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:7]) - idle) / TICKS


def steal_seconds() -> float:
    """CPU seconds (all cores) since boot this virtual machine was ready to run but the host ran someone else."""
    return _cpu_line()[7] / TICKS


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
        self.pids = [self.pid, *spec.companions]
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


class RedisServer:
    """A private redis-server on loopback for the run (callbridge's workers share their registry there)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"], stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{log_path.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


@dataclass
class ProcSample:
    t: float
    cpu: float
    rss: int
    threads: int
    machine_busy: float
    steal: float


@dataclass
class ProcSampler:
    """Samples processes' CPU time, RSS and thread count (with their descendants) every `interval` seconds."""

    pids: list[int]
    interval: float = 0.2
    samples: list[ProcSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> ProcSample:
        st = status(*self.pids)
        return ProcSample(time.time(), cpu_seconds(*self.pids), st["rss"], st["threads"], machine_busy_seconds(),
                          steal_seconds())

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
