"""Soak: many short echo calls over the Twilio path, a few at a time; does the server give back what they took?

One callbridge server (BOT=echo, one worker); CALLS simulated Twilio callers (bench/caller.py's LoadCaller,
real-time paced), CONCURRENCY at a time, each a slot that starts its next call when the last one ends. A call
says hello and hears its echo out, then hangs up (~6 s). The server's RSS, open file descriptors and threads
(/proc/<pid>/status, /proc/<pid>/fd) are read once it is idle, after a first round of calls (what the first
calls load once, such as lazily imported code, is not growth), every `--every` calls, after the last, and after
`--settle` seconds of quiet. A leak shows as growth from the first round on that goes on with the calls and
stays after the settle; writes bench/results/soak.md.

    .venv/bin/python bench/soak.py                                # 1,000 calls, 20 at a time: ~6 minutes
    .venv/bin/python bench/soak.py --calls 200 --out /tmp/soak.md # a shorter run elsewhere
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import uvloop

from bench.caller import LoadCaller, echo_fidelity, heard_between
from bench.run_bench import machine
from bench.servers import Server, ServerSpec, status
from callbridge.simulator import Pause, Speak, WaitForReply
from tests.speech import speech

ROOT = Path(__file__).resolve().parents[1]
HELLO = "Hello, this is a test call, can you hear me?"
#: An echo heard this faithfully (bench/caller.py's echo_fidelity) counts as whole.
WHOLE_ECHO = 0.9


@dataclass(frozen=True)
class Sample:
    label: str
    calls: int  # calls ended by then
    rss: int  # bytes
    fds: int
    threads: int


def sample(pid: int, label: str, calls: int) -> Sample:
    st = status(pid)
    return Sample(label, calls, st["rss"], len(os.listdir(f"/proc/{pid}/fd")), st["threads"])


@dataclass
class Outcome:
    calls: int = 0
    whole: int = 0  # answered once, the echo heard in full
    failures: dict[str, int] = field(default_factory=dict)
    fidelities: list[float] = field(default_factory=list)
    #: Each answered call's echo as heard, and whether its frames went out late: judged after the run, because
    #: scoring an echo takes the generator's loop long enough to make the other calls' frames late.
    heard: list[tuple[np.ndarray, bool]] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    def judge(self, said: np.ndarray) -> None:
        for heard, late in self.heard:
            fidelity = echo_fidelity(heard, said)
            self.fidelities.append(fidelity)
            if fidelity >= WHOLE_ECHO:
                self.whole += 1
            else:  # on a shared machine the generator can fall behind: the caller then said its line with gaps
                self.fail("echo not whole, the caller's frames sent late" if late else "echo not whole")
        self.heard.clear()


async def one_call(url: str, hello: np.ndarray, outcome: Outcome) -> None:
    caller = LoadCaller(url, [Pause(0.2), Speak(hello), WaitForReply("heard", 10.0)], "mark")
    await caller.run()
    outcome.calls += 1
    report = caller.report
    if caller.failure:
        outcome.fail(caller.failure.split(":")[0])
    elif len(report.reply_starts) != 1:
        outcome.fail(f"{len(report.reply_starts)} replies")
    else:
        outcome.heard.append((heard_between(caller, caller.reply_positions[0], None), caller.late_ticks > 0))


async def soak(server: Server, calls: int, concurrency: int, every: int, settle: float) -> tuple[list[Sample], Outcome]:
    hello = speech(HELLO)
    pid = server.pid
    samples = [sample(pid, "idle, before any call", 0)]
    outcome = Outcome()
    await asyncio.gather(*(one_call(server.url, hello, outcome) for _ in range(concurrency)))
    await asyncio.sleep(1.0)
    samples.append(sample(pid, "after the first round", outcome.calls))
    remaining = calls - outcome.calls
    next_sample = (outcome.calls // every + 1) * every

    async def slot(count: int) -> None:
        nonlocal next_sample
        for _ in range(count):
            await one_call(server.url, hello, outcome)
            if outcome.calls >= next_sample and outcome.calls < calls:
                samples.append(sample(pid, "during", outcome.calls))
                next_sample += every

    shares = [remaining // concurrency + (1 if k < remaining % concurrency else 0) for k in range(concurrency)]
    await asyncio.gather(*(slot(count) for count in shares))
    samples.append(sample(pid, "after the last call", outcome.calls))
    await asyncio.sleep(settle)
    samples.append(sample(pid, f"after {settle:g} s of quiet", outcome.calls))
    outcome.judge(hello)
    return samples, outcome


def write_markdown(path: Path, command: str, started: str, seconds: float, calls: int, concurrency: int,
                   samples: list[Sample], outcome: Outcome) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "callbridge"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    first = samples[1]
    last, settled = samples[-2], samples[-1]
    mb = 2**20

    def growth(later: Sample, base: Sample) -> str:
        return (f"{(later.rss - base.rss) / mb:+.1f} MB RSS, {later.fds - base.fds:+d} fds, "
                f"{later.threads - base.threads:+d} threads")

    per_call = (settled.rss - first.rss) / max(1, settled.calls - first.calls) / 1024
    lines = [
        "# Soak: short echo calls over the Twilio path",
        "",
        f"Run {started}, {machine()}; callbridge at {commit}{' + uncommitted changes' if dirty else ''}, one worker, "
        f"BOT=echo. {seconds / 60:.1f} minutes. The machine was shared with other work (RSS and fd counts do not "
        "depend on it; no latency is reported here).",
        "",
        f"    {command}",
        "",
        f"{calls} calls, {concurrency} at a time; each says hello, hears its echo out and hangs up. "
        f"Echo heard whole (answered once, echo fidelity >= {WHOLE_ECHO}): **{outcome.whole} of {outcome.calls}**"
        + (f"; failures: {outcome.failures}" if outcome.failures else "") + "."
        + (f" Echo fidelity p50 {statistics.median(outcome.fidelities):.3f}, min {min(outcome.fidelities):.3f}."
           if outcome.fidelities else ""),
        "",
        "| when | calls ended | RSS (MB) | open fds | threads |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {s.label} | {s.calls} | {s.rss / mb:.1f} | {s.fds} | {s.threads} |" for s in samples),
        "",
        f"- From idle to after the first round: {growth(first, samples[0])} (what the first calls load once).",
        f"- From the first round to after the last call: {growth(last, first)}.",
        f"- From the first round to after the settle: {growth(settled, first)}, "
        f"{per_call:.2f} KB per call over {settled.calls - first.calls} calls.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--every", type=int, default=100, help="sample the server every this many calls")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of quiet before the last sample")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.md")
    args = parser.parse_args()
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    spec = ServerSpec(
        name="callbridge", command=(sys.executable, "-m", "callbridge"), cwd=ROOT,
        env={"HOST": "127.0.0.1", "PORT": "{port}", "BOT": "echo", "LOG_LEVEL": "WARNING", "WORKERS": "1",
             "CONCURRENCY_LIMIT": str(args.concurrency + 10), "TWILIO_AUTH_TOKEN": "", "PUBLIC_URL": ""},
        ready_path="/readyz", reply_end="mark", expects_clear=True, silence_ms=512,
    )
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    began = time.monotonic()
    server = Server(spec, ROOT / "bench" / "work" / "soak" / "server.log")
    try:
        time.sleep(2.0)  # idle once ready
        samples, outcome = uvloop.run(soak(server, args.calls, args.concurrency, args.every, args.settle))
    finally:
        with contextlib.suppress(Exception):
            server.stop()
    write_markdown(args.out, command.strip(), started, time.monotonic() - began, args.calls, args.concurrency,
                   samples, outcome)
    print(args.out.read_text())
    return 0 if outcome.whole == outcome.calls == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
