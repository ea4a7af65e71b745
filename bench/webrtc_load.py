"""WebRTC calls side by side: N concurrent aiortc callers against callbridge and FastRTC, same audio, same run.

    .venv/bin/python bench/webrtc_load.py --levels 1,4,8,16                     # callbridge (this tree) and FastRTC
    .venv/bin/python bench/webrtc_load.py --levels 8 --server old=callbridge:/tmp/old --server new=callbridge:.
    .venv/bin/python bench/webrtc_load.py --levels 8 --profile new              # py-spy on that server too
    .venv/bin/python bench/webrtc_load.py --levels 1 --stages                   # per-stage times (webrtc_stages)

Everything runs in a private network namespace with only loopback (the script re-runs itself under
`unshare -n`): no WebRTC packet can reach a real interface. Servers and callers offer 127.0.0.1 as their only
ICE candidate (tests/integration/loopback_ice, test code, on the servers' path; the callers patch aioice
themselves). For each level the servers take turns (in the order given), each freshly started, idle two
seconds, then loaded with N calls (bench/webrtc_caller.py) spread over worker processes, while its CPU and RSS
are read from /proc (bench/servers.py). Every worker reports its own CPU: on this 2-core machine that is CPU
the server did not get. Writes webrtc.json to --out (default bench/work/webrtc); bench/webrtc_report.py makes
the table and plots from it. Needs PYTHONPATH=. (the callers import bench and callbridge).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hotspots
from bench.load import load_phrases, percentile
from bench.run_bench import FASTRTC_VENV, WORK, ensure_fastrtc, machine, specs, wait_for_quiet, window
from bench.servers import ROOT, ProcSampler, Server, ServerSpec, cpu_seconds, status, steal_seconds
from bench.webrtc_caller import Script48, WebRTCResult

LOOPBACK_ICE = ROOT / "tests" / "integration" / "loopback_ice"
CALLS_PER_WORKER = 4
MAX_WORKERS = 4
CALL_DEADLINE = 60.0
FASTRTC_LIMIT = 200  # FastRTC's Stream takes one call unless told more (its concurrency_limit 'default' is 1)
IN_NAMESPACE = "CALLBRIDGE_BENCH_NETNS"


@dataclass(frozen=True)
class Contender:
    label: str
    spec: ServerSpec


def contender(text: str) -> Contender:
    """`label=callbridge:TREE`, `label=fastrtc`, or just `callbridge` / `fastrtc`."""
    label, _, what = text.rpartition("=")
    kind, _, tree = what.partition(":")
    if kind not in ("callbridge", "fastrtc"):
        raise argparse.ArgumentTypeError(f"not a server: {what!r}")
    spec = specs(Path(tree).resolve() if tree else ROOT)[kind]
    path = {"PYTHONPATH": str(LOOPBACK_ICE)}
    if kind == "callbridge":
        spec = replace(spec, env={**spec.env, **path, "WORKERS": "1", "REDIS_URL": "", "LOG_LEVEL": "WARNING"})
    else:
        spec = replace(spec, env={**spec.env, **path},
                       command=(*spec.command, "--concurrency-limit", str(FASTRTC_LIMIT)))
    return Contender(label or kind, spec)


def script48() -> Script48:
    from callbridge.codec import resample

    phrases = load_phrases()
    up = {name: resample(getattr(phrases, name), 8000, 48000) for name in ("hello", "story", "interrupt")}
    return Script48(**up)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _loopback_peers() -> None:
    """The callers offer 127.0.0.1 only."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


async def _run_calls(url: str, script: Script48, plan: list[tuple[int, float]], start_at: float
                     ) -> tuple[list[dict[str, Any]], float]:
    import aiohttp

    from bench.webrtc_caller import WebRTCCaller

    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu = _cpu_seconds()

    async def one(index: int, offset: float, session: aiohttp.ClientSession) -> dict[str, Any]:
        await asyncio.sleep(offset)
        caller = WebRTCCaller(url, script, lead_in=0.3)
        try:
            await asyncio.wait_for(caller.run(session), CALL_DEADLINE)
        except TimeoutError:
            caller.failure = caller.failure or f"call still running after {CALL_DEADLINE:.0f} s"
        return caller.analyse(index).to_dict()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        results = await asyncio.gather(*(one(index, offset, session) for index, offset in plan))
    return list(results), _cpu_seconds() - cpu


def _worker(url: str, script: Script48, plan: list[tuple[int, float]], ready: Any, start_at: Any,
            pipe: Connection) -> None:
    _loopback_peers()
    ready.wait()
    deadline = time.monotonic() + 10
    while not start_at.value and time.monotonic() < deadline:
        time.sleep(0.005)
    import uvloop

    pipe.send(uvloop.run(_run_calls(url, script, plan, start_at.value)))
    pipe.close()


def run_calls(url: str, script: Script48, calls: int, ramp: float = 2.0) -> tuple[list[WebRTCResult], list[float],
                                                                                  float, float]:
    """`calls` concurrent WebRTC calls over worker processes: results, each worker's CPU, start and end time."""
    workers = max(1, min(MAX_WORKERS, math.ceil(calls / CALLS_PER_WORKER)))
    plans: list[list[tuple[int, float]]] = [[] for _ in range(workers)]
    for index in range(calls):
        plans[index % workers].append((index, ramp * index / calls))
    context = mp.get_context("spawn")
    ready = context.Barrier(workers + 1)
    start_at = context.Value("d", 0.0)
    processes, pipes = [], []
    for plan in plans:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker, args=(url, script, plan, ready, start_at, sender), daemon=True)
        process.start()
        sender.close()
        processes.append(process)
        pipes.append(receiver)
    ready.wait(timeout=60)
    start_at.value = started = time.time() + 0.1
    results: list[WebRTCResult] = []
    worker_cpu: list[float] = []
    deadline = time.monotonic() + CALL_DEADLINE + ramp + 30
    for process, pipe in zip(processes, pipes, strict=True):
        if pipe.poll(max(0.0, deadline - time.monotonic())):
            found, cpu = pipe.recv()
            results.extend(WebRTCResult(**r) for r in found)
            worker_cpu.append(cpu)
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    results.extend(WebRTCResult(index=-1, failure="load worker lost") for _ in range(calls - len(results)))
    return results, worker_cpu, started, time.time()


def summarise(results: list[WebRTCResult]) -> dict[str, Any]:
    ok = [r for r in results if not r.failure and all(x is not None for x in r.turn_latency)]
    latencies = [x for r in results for x in r.turn_latency if x is not None]
    turns = sum(len(r.turn_latency) or 3 for r in results)
    old = [r.old_reply_after_onset for r in results if r.old_reply_after_onset is not None]
    reply = sum(r.reply_seconds for r in results)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return {
        "answered": len(ok),
        "turns_answered_pct": round(100 * len(latencies) / turns, 1) if turns else 0.0,
        "failures": failures,
        "turn_p50_ms": ms(percentile(latencies, 50)),
        "turn_p95_ms": ms(percentile(latencies, 95)),
        "turn_max_ms": ms(max(latencies) if latencies else None),
        "audible_p50_ms": ms(percentile([x for r in results for x in r.audible_latency if x is not None], 50)),
        "turn_latencies_ms": [round(x * 1000, 1) for x in latencies],
        "first_turn_ms": [ms(r.turn_latency[0]) for r in results if r.turn_latency and r.turn_latency[0] is not None],
        "split_replies": sum(r.split_replies for r in results),
        "old_reply_p50_ms": ms(percentile(old, 50)),
        "old_reply_p95_ms": ms(percentile(old, 95)),
        "stall_pct": round(100 * sum(r.stall_seconds for r in results) / reply, 2) if reply else None,
        "call_seconds": round(sum(r.call_seconds for r in results), 1),
    }


STAGES = ROOT / "bench" / "webrtc_stages"
SPEECH_RMS = 60.0  # a caller frame at or above this is speech (the microphone's noise floor is RMS 20)
AUDIBLE_RMS = 8.0  # a reply frame at or above this carries sound (bench.webrtc_caller.AUDIBLE_RMS)


def traced(who: Contender, log: Path) -> Contender:
    """The callbridge server with bench/webrtc_stages on its path: it logs each stage's times to `log`."""
    path = f"{who.spec.cwd}:{STAGES}"
    return Contender(who.label, replace(who.spec, env={**who.spec.env, "PYTHONPATH": path, "STAGES_LOG": str(log)}))


def stage_times(log: Path, results: list[WebRTCResult]) -> list[dict[str, float]]:
    """Per turn of a one-call run, ms from the end of the caller's speech to each stage it reached."""
    events: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        stage, t, rms = line.split()
        events.setdefault(stage, []).append((float(t), float(rms)))

    def last_sound(stage: str, before: float) -> float | None:
        return max((t for t, rms in events.get(stage, []) if t < before and rms >= SPEECH_RMS), default=None)

    def first(stage: str, after: float, loud: bool = True) -> float | None:
        return min((t for t, rms in events.get(stage, []) if t > after and (rms >= AUDIBLE_RMS or not loud)),
                   default=None)

    turns = []
    for result in results:
        for end, latency in zip(result.speech_ends, result.turn_latency, strict=False):
            turn = first("turn_ended", end, loud=False)
            if turn is None or latency is None:
                continue
            times = {"decoded (last speech)": last_sound("decoded", turn),
                     "push_audio (last speech)": last_sound("push_audio", turn), "turn_ended": turn}
            times["next_audio (first reply frame)"] = out = first("next_audio", turn)
            times["encoded"] = first("encoded", out) if out is not None else None
            times["caller hears"] = end + latency
            turns.append({k: round(1000 * (v - end), 1) for k, v in times.items() if v is not None})
    return turns


def run_level(who: Contender, calls: int, script: Script48, profile: bool, stages: bool = False) -> dict[str, Any]:
    wait_for_quiet()
    name = f"{who.label}-{calls}"
    log = WORK / "logs" / f"webrtc-stages-{name}.txt"
    if stages:
        log.unlink(missing_ok=True)
        who = traced(who, log)
    server = Server(who.spec, WORK / "logs" / f"webrtc-{name}.log")
    spy = None
    try:
        idle = cpu_seconds(*server.pids)
        time.sleep(2.0)
        idle_cores = (cpu_seconds(*server.pids) - idle) / 2.0
        rss_idle = status(*server.pids)["rss"]
        if profile:
            spy = hotspots.record(server.pid, 25, WORK / f"webrtc-profile-{name}.raw")
        stolen = steal_seconds()
        with ProcSampler(server.pids) as sampler:
            results, worker_cpu, started, finished = run_calls(server.url, script, calls)
        stolen = steal_seconds() - stolen
        if spy is not None:
            spy.wait(60)
    finally:
        server.stop()
    level = summarise(results)
    span = window(sampler.samples, started, finished)
    wall = span[-1].t - span[0].t
    server_cpu = span[-1].cpu - span[0].cpu
    rss_peak = max(s.rss for s in span)
    level.update(
        server=who.label, calls=calls, wall_seconds=round(wall, 1),
        idle_cores=round(idle_cores, 3), rss_idle_mb=round(rss_idle / 2**20, 1),
        rss_peak_mb=round(rss_peak / 2**20, 1), rss_per_call_mb=round((rss_peak - rss_idle) / 2**20 / calls, 2),
        threads_peak=max(s.threads for s in span),
        server_cpu_seconds=round(server_cpu, 2), server_cores=round(server_cpu / wall, 3) if wall else None,
        server_cpu_ms_per_call_second=round(1000 * server_cpu / level["call_seconds"], 1)
        if level["call_seconds"] else None,
        caller_cpu_ms_per_call_second=round(1000 * sum(worker_cpu) / level["call_seconds"], 1)
        if level["call_seconds"] else None,
        caller_workers=len(worker_cpu),
        other_cores=round(max(0.0, span[-1].machine_busy - span[0].machine_busy - server_cpu - sum(worker_cpu)) / wall,
                          2) if wall else None,
        steal_pct=round(100 * stolen / (wall * (os.cpu_count() or 1)), 1) if wall else None,
    )
    if stages:
        level["stages_ms"] = stage_times(log, results)
    return level


def print_level(level: dict[str, Any]) -> None:
    print(f"{level['server']:>12} N={level['calls']:<3} answered {level['answered']}/{level['calls']} "
          f"turns {level['turns_answered_pct']}%  p50/p95 {level['turn_p50_ms']}/{level['turn_p95_ms']} ms  "
          f"old reply p50 {level['old_reply_p50_ms']} ms  stalls {level['stall_pct']}%  "
          f"server {level['server_cpu_ms_per_call_second']} ms/call-s  callers "
          f"{level['caller_cpu_ms_per_call_second']} ms/call-s  RSS/call {level['rss_per_call_mb']} MB  "
          f"threads {level['threads_peak']}  stolen {level['steal_pct']}%  {level['failures'] or ''}", flush=True)


def in_namespace() -> None:
    """Re-run this command in a new network namespace that has only loopback, once."""
    if os.environ.get(IN_NAMESPACE):
        return
    if shutil.which("unshare") is None:
        sys.exit("needs unshare (util-linux) for a loopback-only network namespace")
    command = " ".join(f"'{part}'" for part in [sys.executable, *sys.argv])
    os.environ[IN_NAMESPACE] = "1"
    os.execvp("unshare", ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {command}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 8])
    parser.add_argument("--server", dest="servers", type=contender, action="append",
                        help="label=callbridge:TREE or fastrtc; repeat; default: callbridge (this tree) and fastrtc")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the whole ladder (alternating again)")
    parser.add_argument("--profile", action="append", default=[], help="label of a server to run under py-spy")
    parser.add_argument("--stages", action="store_true",
                        help="callbridge servers log per-stage times (bench/webrtc_stages); use at N=1")
    parser.add_argument("--out", type=Path, default=WORK / "webrtc")
    args = parser.parse_args()
    servers = args.servers or [contender("callbridge"), contender("fastrtc")]
    if any(s.spec.name == "fastrtc" for s in servers) and not os.environ.get(IN_NAMESPACE):
        ensure_fastrtc()  # from the package registry, before the namespace cuts the network off
    in_namespace()
    script = script48()
    levels: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for calls in args.levels:
            for who in servers:
                level = run_level(who, calls, script, who.label in args.profile,
                                  args.stages and who.spec.name == "callbridge")
                levels.append(level)
                print_level(level)
                for turn in level.get("stages_ms", []):
                    print("    stages (ms after the end of speech):", turn, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    data = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "command": " ".join(sys.argv), "machine": machine(),
            "servers": {s.label: " ".join(s.spec.command) + f" (cwd {s.spec.cwd})" for s in servers},
            "fastrtc_venv": str(FASTRTC_VENV), "levels": levels}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "webrtc.json").write_text(json.dumps(data, indent=1))
    print(f"wrote {args.out}/webrtc.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
