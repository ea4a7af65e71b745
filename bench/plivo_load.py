"""How many Plivo calls one callbridge process holds with p95 turn latency <= PAUSE_MS + 100 ms.

Steps of N concurrent Plivo callers (tests.integration.plivo_caller: Plivo's answer URL and audio stream protocol,
real-time paced, one asyncio process) against a fresh echo server: each call says two phrases and hears each echo
whole. A step passes when every call got both echoes and the p95 of the turn latencies (end of speech -> first
reply audio) is within PAUSE_MS + 100 ms; the run stops at the first step that fails. Short on purpose (2 cores
shared): the caller's CPU is measured too, so a step lost to the generator shows.

    .venv/bin/python bench/plivo_load.py --steps 8 16 24 32
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import Server, ServerSpec, cpu_seconds
from callbridge.simulator import Pause, Speak, WaitForReply
from tests.integration.plivo_caller import PlivoCaller
from tests.speech import speech

ROOT = Path(__file__).resolve().parents[1]
PAUSE_MS = 512
HELLO = "Hello, this is a test call, can you hear me?"
QUESTION = "What time does the office open tomorrow?"


def spec() -> ServerSpec:
    return ServerSpec(name="callbridge", command=(sys.executable, "-m", "callbridge"),
                      env={"PORT": "{port}", "HOST": "127.0.0.1", "BOT": "echo", "LOG_LEVEL": "WARNING",
                           "CONCURRENCY_LIMIT": "200", "PAUSE_MS": str(PAUSE_MS)},
                      ready_path="/readyz", reply_end="mark", expects_clear=True, silence_ms=PAUSE_MS)


async def step(url: str, calls: int, phrases: list[np.ndarray]) -> tuple[list[float], int]:
    """`calls` Plivo calls started over a second; (every turn latency, calls that did not hear both echoes)."""
    async def one(k: int) -> list[float]:
        await asyncio.sleep(k / calls)
        script = [Pause(0.3), Speak(phrases[0]), WaitForReply("heard"), Speak(phrases[1]), WaitForReply("heard")]
        report = await PlivoCaller(url, script).run()
        return report.turn_latencies() if not report.rejected else []

    results = await asyncio.gather(*(one(k) for k in range(calls)))
    return [t for r in results for t in r], sum(len(r) != 2 for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 24, 32])
    args = parser.parse_args()
    phrases = [speech(HELLO), speech(QUESTION)]
    budget = (PAUSE_MS + 100) / 1000
    print("| calls | p50 ms | p95 ms | calls missing an echo | server CPU s | caller CPU s | wall s | within |")
    print("|---|---|---|---|---|---|---|---|")
    for calls in args.steps:
        server = Server(spec(), ROOT / "bench" / "work" / "plivo_load" / f"server-{calls}.log")
        try:
            cpu0, own0, wall = cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            latencies, missing = asyncio.run(step(server.url, calls, phrases))
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            used, wall = cpu_seconds(server.pid) - cpu0, time.monotonic() - wall
        finally:
            server.stop()
        p50, p95 = (np.percentile(latencies, q) if latencies else float("inf") for q in (50, 95))
        ok = not missing and p95 <= budget
        caller = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        print(f"| {calls} | {1000 * p50:.0f} | {1000 * p95:.0f} | {missing} | {used:.1f} | {caller:.1f} | {wall:.0f} "
              f"| {'yes' if ok else 'no'} |", flush=True)
        if not ok:
            break


if __name__ == "__main__":
    main()
