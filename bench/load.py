"""Load generator: N concurrent simulated Twilio calls against any base URL, spread over several processes.

Each call (bench.caller) says hello and hears the echo in full, tells a story with a hesitation in the middle,
and barges in one second into the story's reply; all audio is real-time paced. Calls start spread evenly
over `ramp` seconds. The calls are shared out to worker processes (asyncio each) so that the generator is not
the bottleneck (uvloop, for the same reason); every worker reports its own CPU time and how late its event
loop ran, so a run can show that it was not.

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --calls 16               # callbridge
    .venv/bin/python bench/load.py --url http://127.0.0.1:8100 --calls 16 --reply-end gap --no-clear  # FastRTC
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --calls 16 --carrier telnyx  # Telnyx's socket
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import uvloop

from bench.caller import (
    PACE_GRID,
    TURN_NAMES,
    CallResult,
    LoadCaller,
    Pacer,
    Phrases,
    ReplyEnd,
    TelnyxLoadCaller,
    analyse,
    make_script,
)

HELLO = "Hello, this is a test call, can you hear me?"
STORY_A = "Once upon a time, in a small village by the sea,"
STORY_B = "there lived an old fisherman and his clever cat."
INTERRUPT = "Wait, stop, I have a question."
CALL_DEADLINE = 90.0  # seconds: a call still running then is abandoned (the script itself ends in ~25 s)
CALLS_PER_WORKER = 40
MAX_WORKERS = 4


def load_phrases() -> Phrases:
    """The caller's lines, spoken by espeak-ng (tests.speech caches them under tests/fixtures/generated)."""
    from tests.speech import speech

    return Phrases(hello=speech(HELLO), story_a=speech(STORY_A), story_b=speech(STORY_B), interrupt=speech(INTERRUPT))


@dataclass(frozen=True)
class Target:
    base_url: str
    reply_end: ReplyEnd = "mark"
    expects_clear: bool = True
    pace_ms: float = PACE_GRID * 1000  # the generator's pacing grid (bench.caller.Pacer): 1 ms paces each call alone
    carrier: Literal["twilio", "telnyx"] = "twilio"  # whose webhook and media socket the calls use


@dataclass
class WorkerStats:
    calls: int = 0
    cpu_seconds: float = 0.0
    loop_lag_max: float = 0.0  # worst oversleep of the pacer's timer in this worker's event loop
    loop_lag_p99: float = 0.0
    finished: float = 0.0  # time.time() when its last call ended


@dataclass
class LoadRun:
    target: Target
    calls: int
    started: float = 0.0  # time.time() when the first call started
    finished: float = 0.0  # ... and when the last one ended
    results: list[CallResult] = field(default_factory=list)
    workers: list[WorkerStats] = field(default_factory=list)

    @property
    def wall_seconds(self) -> float:
        return self.finished - self.started

    @property
    def generator_cpu_seconds(self) -> float:
        return sum(w.cpu_seconds for w in self.workers)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_calls(target: Target, phrases: Phrases, plan: list[tuple[int, float]], start_at: float,
                     lead_in: float, rounds: int) -> tuple[list[tuple[int, LoadCaller]], WorkerStats]:
    """The calls of one worker, and the worker's CPU and event-loop lag while they ran (how late the pacer's
    timer fired: a separate 10 ms monitor timer would cost the worker 100 more wake-ups a second)."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu = _cpu_seconds()

    async def one(index: int) -> tuple[int, LoadCaller]:
        kind = TelnyxLoadCaller if target.carrier == "telnyx" else LoadCaller
        caller = kind(target.base_url, make_script(phrases, lead_in), target.reply_end, target.pace_ms / 1000)
        try:
            await asyncio.wait_for(caller.run(), CALL_DEADLINE)
        except TimeoutError:
            caller.failure = caller.failure or f"call still running after {CALL_DEADLINE:.0f} s"
        return index, caller

    async def slot(index: int, offset: float) -> list[tuple[int, LoadCaller]]:
        await asyncio.sleep(offset)
        return [await one(index * rounds + k) for k in range(rounds)]

    slots = await asyncio.gather(*(slot(index, offset) for index, offset in plan))
    stats = WorkerStats(calls=len(plan) * rounds, cpu_seconds=_cpu_seconds() - cpu, finished=time.time())
    lags = sorted(Pacer.running().lags)
    if lags:
        stats.loop_lag_max = lags[-1]
        stats.loop_lag_p99 = lags[int(0.99 * (len(lags) - 1))]
    return [call for calls in slots for call in calls], stats


def _worker(target: Target, phrases: Phrases, plan: list[tuple[int, float]], lead_in: float, rounds: int,
            ready: Any, start_at: Any, pipe: Connection) -> None:
    """One load process: waits for the common start time, runs its calls, then analyses them (after the
    load, so that the analysis neither disturbs the calls nor counts as the generator's CPU)."""
    ready.wait()
    deadline = time.monotonic() + 10
    while not start_at.value and time.monotonic() < deadline:  # set by the parent once all workers are ready
        time.sleep(0.005)
    gc.freeze()  # what is loaded by now lives as long as the process: the collector need not scan it again
    gc.set_threshold(20_000, 20, 20)  # the calls allocate many short-lived objects and almost no cycles
    calls, stats = uvloop.run(_run_calls(target, phrases, plan, start_at.value, lead_in, rounds))
    results = [analyse(caller, phrases, index, target.expects_clear).to_dict() for index, caller in calls]
    pipe.send((results, stats))
    pipe.close()


def run_load(target: Target, phrases: Phrases, calls: int, *, ramp: float = 2.0, lead_in: float = 0.3,
             rounds: int = 1, workers: int | None = None) -> LoadRun:
    """Run `calls` concurrent calls, each slot `rounds` calls one after another; blocks until all have
    finished (each call bounded by CALL_DEADLINE)."""
    workers = workers or max(1, min(MAX_WORKERS, math.ceil(calls / CALLS_PER_WORKER)))
    plans: list[list[tuple[int, float]]] = [[] for _ in range(workers)]
    for index in range(calls):
        plans[index % workers].append((index, ramp * index / calls))
    context = mp.get_context("spawn")
    ready = context.Barrier(workers + 1)
    start_at = context.Value("d", 0.0)
    processes, pipes = [], []
    for plan in plans:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(target, phrases, plan, lead_in, rounds, ready, start_at, sender), daemon=True
        )
        process.start()
        sender.close()
        processes.append(process)
        pipes.append(receiver)
    ready.wait(timeout=60)
    start_at.value = time.time() + 0.1
    run = LoadRun(target=target, calls=calls, started=start_at.value)
    deadline = time.monotonic() + rounds * CALL_DEADLINE + ramp + 30
    for process, pipe in zip(processes, pipes, strict=True):
        if pipe.poll(max(0.0, deadline - time.monotonic())):
            results, stats = pipe.recv()
            run.results.extend(CallResult(**r) for r in results)
            run.workers.append(stats)
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    run.finished = max((w.finished for w in run.workers), default=time.time())
    lost = calls * rounds - len(run.results)
    run.results.extend(CallResult(index=-1, failure="load worker lost") for _ in range(lost))
    return run


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(run: LoadRun) -> dict[str, Any]:
    """The run's numbers as one flat dict (times in ms), for tables and JSON."""
    results = run.results
    ok = [r for r in results if not r.failure]
    latencies = [x for r in results for x in r.turn_latency if x is not None]
    reply_seconds = sum(r.reply_seconds for r in results)
    stall_seconds = sum(r.stall_seconds for r in results)
    fidelity = [min(f for f in r.fidelity if f is not None) for r in ok if any(f is not None for f in r.fidelity)]
    clears = [r.clear_latency for r in results if r.clear_latency is not None]
    old = [r.old_reply_after_onset for r in results if r.old_reply_after_onset is not None]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    turns = [x for r in results for x in (r.turn_latency or [None] * len(TURN_NAMES))]
    return {
        "calls": run.calls,
        "call_count": len(results),
        "answered": len(ok),
        "turns_answered_pct": round(100 * sum(x is not None for x in turns) / len(turns), 1) if turns else 0.0,
        "failures": failures,
        "turn_p50_ms": ms(percentile(latencies, 50)),
        "turn_p95_ms": ms(percentile(latencies, 95)),
        "turn_max_ms": ms(max(latencies) if latencies else None),
        "turn_latencies_ms": [round(x * 1000, 1) for x in latencies],
        "turn_p95_by_turn_ms": {name: ms(percentile([r.turn_latency[k] for r in results if len(r.turn_latency) > k
                                                     and r.turn_latency[k] is not None], 95))
                                for k, name in enumerate(TURN_NAMES)},
        "split_replies": sum(r.split_replies for r in results),
        "clear_p50_ms": ms(percentile(clears, 50)),
        "clear_p95_ms": ms(percentile(clears, 95)),
        "old_reply_p50_ms": ms(percentile(old, 50)),
        "old_reply_p95_ms": ms(percentile(old, 95)),
        "stall_pct": round(100 * stall_seconds / reply_seconds, 3) if reply_seconds else None,
        "fidelity_p50": round(percentile(fidelity, 50) or 0.0, 3) if fidelity else None,
        "fidelity_min": round(min(fidelity), 3) if fidelity else None,
        "call_seconds": round(sum(r.call_seconds for r in results), 1),
        "wall_seconds": round(run.wall_seconds, 1),
        "generator_cpu_seconds": round(run.generator_cpu_seconds, 2),
        "generator_cores": round(run.generator_cpu_seconds / run.wall_seconds, 3) if run.wall_seconds else None,
        "generator_workers": len(run.workers),
        "generator_pace_ms": run.target.pace_ms,
        "generator_loop_lag_max_ms": ms(max((w.loop_lag_max for w in run.workers), default=0.0)),
        "generator_loop_lag_p99_ms": ms(max((w.loop_lag_p99 for w in run.workers), default=0.0)),
        "generator_late_ticks": sum(r.late_ticks for r in results),
        "other_messages": sum(r.other_messages for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="N concurrent simulated Twilio calls against a base URL.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which calls start (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="calls per slot, one after another (default 1)")
    parser.add_argument("--workers", type=int, help="load processes (default: one per 40 calls, at most 4)")
    parser.add_argument("--reply-end", choices=["mark", "gap"], default="mark",
                        help="how replies end: Twilio marks (callbridge) or a gap in arrivals (FastRTC)")
    parser.add_argument("--no-clear", action="store_true", help="the server never sends clear (FastRTC)")
    parser.add_argument("--carrier", choices=["twilio", "telnyx"], default="twilio",
                        help="whose webhook and media socket the calls use (telnyx: the server without "
                             "TELNYX_PUBLIC_KEY, the calls are unsigned)")
    parser.add_argument("--pace-ms", type=float, default=PACE_GRID * 1000,
                        help="the generator's pacing grid, a divisor of 20 (default 5; 1 sends each call's frames on "
                             "its own millisecond, as one timer per call did, at more CPU)")
    args = parser.parse_args()
    if not 0 < args.pace_ms <= 20 or abs(20 / args.pace_ms - round(20 / args.pace_ms)) > 1e-9:
        parser.error("--pace-ms must divide 20")
    target = Target(args.url, args.reply_end, expects_clear=not args.no_clear, pace_ms=args.pace_ms,
                    carrier=args.carrier)
    run = run_load(target, load_phrases(), args.calls, ramp=args.ramp, rounds=args.rounds, workers=args.workers)
    summary = summarise(run)
    summary.pop("turn_latencies_ms")
    print(json.dumps(summary, indent=2))
    return 0 if summary["answered"] == summary["call_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
