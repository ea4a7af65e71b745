"""Old code against new code at one load, alternated: where a change moves the server's CPU and latency.

    .venv/bin/python bench/ab.py --a /tmp/old --calls 160 --pairs 2   # /tmp/old: `git worktree add /tmp/old HEAD~1`

Each attempt starts callbridge (WORKERS = cores, with its own redis-server) from a source tree, runs
bench/load.py's calls against it, and reads every server thread's CPU and run-queue wait from
/proc/<pid>/task/*/schedstat, and the CPU the virtual machine's host stole from /proc/stat. The trees take
turns (A B A B ...), because this machine's speed swings from minute to minute (see bench/README.md): compare
pairs, and distrust a pair where either side had several % stolen.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.caller import Phrases
from bench.load import Target, load_phrases, run_load, summarise
from bench.run_bench import ROOT, WORK, specs
from bench.servers import RedisServer, Server, family, steal_seconds


def threads(roots: list[int]) -> dict[tuple[int, int], tuple[float, float]]:
    """(pid, tid) -> (CPU seconds run, seconds waited for a CPU) of every thread of the processes now."""
    found: dict[tuple[int, int], tuple[float, float]] = {}
    for pid in family(roots):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    run, wait, _ = (int(v) for v in f.read().split())
            except (OSError, ValueError):
                continue
            found[(pid, int(tid))] = (run / 1e9, wait / 1e9)
    return found


def attempt(tree: Path, calls: int, phrases: Phrases, redis: RedisServer) -> dict[str, Any]:
    spec = specs(tree, redis)["callbridge"]
    server = Server(spec, WORK / "logs" / f"ab-{calls}.log")
    try:
        before, stolen = threads(server.pids), steal_seconds()
        started = time.monotonic()
        run = run_load(Target(server.url, spec.reply_end, spec.expects_clear), phrases, calls)
        wall = time.monotonic() - started
        after, stolen = threads(server.pids), steal_seconds() - stolen
    finally:
        server.stop()
    used = sorted(((after[key][0] - before.get(key, (0.0, 0.0))[0], after[key][1] - before.get(key, (0.0, 0.0))[1])
                   for key in after), reverse=True)
    workers = os.cpu_count() or 1
    summary = summarise(run)
    return {
        "server_cpu_s": round(sum(cpu for cpu, _ in used), 2),
        # the busiest threads: each worker's event loop, then its VAD thread
        "top_threads_cpu_s": [round(cpu, 2) for cpu, _ in used[: 2 * workers]],
        "run_queue_wait_s": round(sum(wait for _, wait in used), 2),
        "stolen_pct": round(100 * stolen / (wall * workers), 1),
        "turn_p50_ms": summary["turn_p50_ms"],
        "turn_p95_ms": summary["turn_p95_ms"],
        "clear_p50_ms": summary["clear_p50_ms"],
        "old_reply_p95_ms": summary["old_reply_p95_ms"],
        "stall_pct": summary["stall_pct"],
        "answered": summary["answered"],
        "generator_cores": summary["generator_cores"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the old source tree (a worktree or a copy)")
    parser.add_argument("--b", type=Path, default=ROOT, help="the new source tree (default: this one)")
    parser.add_argument("--calls", type=int, default=160)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    phrases = load_phrases()
    redis = RedisServer(WORK / "logs" / "ab-redis.log")
    try:
        for pair in range(1, args.pairs + 1):
            for name, tree in (("A", args.a), ("B", args.b)):
                print(f"pair {pair} {name} ({tree}): {attempt(tree.resolve(), args.calls, phrases, redis)}", flush=True)
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
