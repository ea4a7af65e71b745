"""How many Vonage calls callbridge holds: N concurrent simulated Vonage calls on /vonage/handler, per level.

Each call (tests/integration/fake_vonage.py: Vonage's published protocol, 16 kHz linear PCM, 20 ms binary
frames paced in real time, notify answered once played) asks the answer webhook for its NCCO, then says hello
twice, each time hearing the echo to its end. Calls start spread over `--ramp` seconds and are shared out to
worker processes (uvloop each), so that the generator is not the limit. A level holds when every call got both
echoes, and the p95 turn latency (end of speech to first reply audio) is within PAUSE_MS + 100 ms.

    .venv/bin/python bench/vonage_load.py --levels 64,80,96 [--out table.md]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import uvloop

from bench.servers import Server, ServerSpec, cpu_seconds, machine_busy_seconds
from tests.integration.fake_vonage import Pause, Speak, VonageCaller, WaitForReply, answer, call_params

HELLO = "Hello, this is a test call, can you hear me?"
PAUSE_MS = 512  # the server's default PAUSE_MS
CALLS_PER_WORKER = 24


@dataclass
class CallOutcome:
    latencies: list[float] = field(default_factory=list)
    failure: str = ""


async def _one_call(base_url: str, said: np.ndarray, offset: float) -> CallOutcome:
    await asyncio.sleep(offset)
    outcome = CallOutcome()
    try:
        status, ncco = await asyncio.to_thread(answer, base_url, call_params())
        if status != 200 or not ncco:
            return CallOutcome(failure=f"webhook answered {status} {ncco!r}")
        script = [Pause(0.3), Speak(said), WaitForReply("heard"), Speak(said), WaitForReply("heard")]
        record = await asyncio.wait_for(VonageCaller(ncco[0]["endpoint"][0], script).run(), 60)
    except Exception as exc:  # a load run records every failure instead of stopping
        return CallOutcome(failure=f"{type(exc).__name__}: {exc}")
    outcome.latencies = record.turn_latencies()
    if len(outcome.latencies) != 2 or record.frame_sizes != {640} or record.close_code != 1000:
        outcome.failure = (f"{len(outcome.latencies)} of 2 replies, frames {sorted(record.frame_sizes)}, "
                           f"close {record.close_code}")
    return outcome


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(base_url: str, offsets: list[float], start_at: float) -> tuple[list[CallOutcome], float]:
    """One load process: its calls' outcomes, and the CPU seconds it spent on them."""
    from tests.speech import speech

    said = speech(HELLO, 16000)

    async def run() -> tuple[list[CallOutcome], float]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = _cpu()
        outcomes = list(await asyncio.gather(*(_one_call(base_url, said, offset) for offset in offsets)))
        return outcomes, _cpu() - cpu

    return uvloop.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def run_level(server: Server, calls: int, ramp: float) -> dict[str, float | int]:
    workers = max(1, math.ceil(calls / CALLS_PER_WORKER))
    offsets: list[list[float]] = [[] for _ in range(workers)]
    for index in range(calls):
        offsets[index % workers].append(ramp * index / calls)
    start_at = time.time() + 3.0  # the workers' start-up (spawn, imports, speech) is not the server's load
    with mp.get_context("spawn").Pool(workers) as pool:
        pending = pool.starmap_async(_worker, [(server.url, o, start_at) for o in offsets])
        time.sleep(max(0.0, start_at - time.time()))
        cpu, busy = cpu_seconds(*server.pids), machine_busy_seconds()
        parts = pending.get()
    elapsed = time.time() - start_at
    cpu, busy = cpu_seconds(*server.pids) - cpu, machine_busy_seconds() - busy
    outcomes = [o for part, _ in parts for o in part]
    generator = sum(g for _, g in parts)
    latencies = [x for o in outcomes for x in o.latencies]
    failures = [o.failure for o in outcomes if o.failure]
    for failure in sorted(set(failures))[:3]:
        print(f"  failure: {failure}", flush=True)
    return {"calls": calls, "failed": len(failures), "p50_ms": round(percentile(latencies, 50) * 1000),
            "p95_ms": round(percentile(latencies, 95) * 1000), "max_ms": round(max(latencies) * 1000),
            "server_cpu_ms_per_call_second": round(cpu * 1000 / max(1e-9, calls * elapsed), 1),
            "generator_cores": round(generator / elapsed, 2),
            "other_cores": round(max(0.0, busy - cpu - generator) / elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="8,16,32", help="numbers of concurrent calls, comma-separated")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which a level's calls start")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    spec = ServerSpec(name="callbridge", command=(sys.executable, "-m", "callbridge"),
                      env={"PORT": "{port}", "HOST": "127.0.0.1", "BOT": "echo", "LOG_LEVEL": "WARNING",
                           "CONCURRENCY_LIMIT": str(max(levels) + 10)},
                      ready_path="/readyz", reply_end="mark", expects_clear=True, silence_ms=PAUSE_MS)
    rows = []
    server = Server(spec, Path("bench/work/vonage/server.log"))
    try:
        for calls in levels:
            row = run_level(server, calls, args.ramp)
            row["holds"] = int(row["failed"] == 0 and row["p95_ms"] <= PAUSE_MS + 100)
            print(row, flush=True)
            rows.append(row)
    finally:
        server.stop()
    table = ["| calls | failed | p50 ms | p95 ms | max ms | server CPU ms per call-second | load generator (cores) "
             "| everything else (cores) | holds |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['calls']} | {r['failed']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
              f"{r['server_cpu_ms_per_call_second']} | {r['generator_cores']} | {r['other_cores']} | "
              f"{'yes' if r['holds'] else 'no'} |" for r in rows]
    print("\n".join(table))
    if args.out:
        args.out.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
