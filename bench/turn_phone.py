"""End of turn over the phone path: END_OF_TURN=model against the silence rules, with real servers and callers.

callbridge servers with the echo bot run side by side, one per rule of RULES chosen (`--rules`; by default
`model 200/0.5/512`: END_OF_TURN=model, ask at 200 ms, threshold 0.5, PAUSE_MS=512 as the bound; `silence 512`,
the default; `silence 200`, what Pipecat does). Every utterance of bench/turn_corpus.py's chosen categories
(espeak-ng voices, 8 kHz, through µ-law) is said by the simulated Twilio caller (callbridge.simulator) to every
server at once, in real time, a few utterances at a time. Per server:

- latency: end of speech (the simulator's: the last loud 20 ms frame sent) -> the first reply audio that starts
  after it, p50 / p95;
- splits: turns the server ended before the end of speech (its log's turn count for the call, less the one
  turn the utterance is), and the utterances split at least once;
- how the final turn ended (the log's reasons), and the server's CPU per call-second over the run (all the
  calls' audio, speech and silence, /proc), the model's own CPU from its /metrics counter.

    .venv/bin/python bench/turn_phone.py [--categories finished comma hesitation list] [--parallel 2] [--rules ...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.servers import Server, ServerSpec, cpu_seconds
from bench.turn_corpus import ESPEAK_VOICES, Utterance, build
from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForReply

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
LEAD_SECONDS = 0.3  # of the corpus's 0.5 s before speech, kept
TAIL_SECONDS = 1.2  # of its 2 s after: past the slowest rule's PAUSE_MS and the reply's start
RULES = {
    "model 200/0.5/512": {"END_OF_TURN": "model", "END_OF_TURN_ASK_MS": "200", "END_OF_TURN_THRESHOLD": "0.5",
                          "PAUSE_MS": "512"},
    # Asked again every 150 ms of the pause (END_OF_TURN_ASK_EVERY_MS), a stricter threshold, a longer bound.
    "model 200+150/0.8/800": {"END_OF_TURN": "model", "END_OF_TURN_ASK_MS": "200", "END_OF_TURN_ASK_EVERY_MS": "150",
                              "END_OF_TURN_THRESHOLD": "0.8", "PAUSE_MS": "800"},
    "model 200+150/0.7/800": {"END_OF_TURN": "model", "END_OF_TURN_ASK_MS": "200", "END_OF_TURN_ASK_EVERY_MS": "150",
                              "END_OF_TURN_THRESHOLD": "0.7", "PAUSE_MS": "800"},
    "silence 512": {"END_OF_TURN": "silence", "PAUSE_MS": "512"},
    "silence 200": {"END_OF_TURN": "silence", "PAUSE_MS": "200"},
}
MID_SENTENCE = ("comma", "hesitation", "list")


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)  # per utterance answered after its end of speech
    splits: int = 0
    split_utterances: int = 0
    unanswered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # how the last turn of each utterance ended


def spec(name: str, env: dict[str, str]) -> ServerSpec:
    return ServerSpec(name=name, command=(sys.executable, "-m", "callbridge"),
                      env={"PORT": "{port}", "HOST": "127.0.0.1", "BOT": "echo", "LOG_FORMAT": "json",
                           "LOG_LEVEL": "INFO", "CONCURRENCY_LIMIT": "50", **env},
                      ready_path="/readyz", reply_end="mark", expects_clear=True, silence_ms=int(env["PAUSE_MS"]))


def line_of(u: Utterance) -> np.ndarray:
    """What the caller says: the utterance with shorter silence around it."""
    start = u.speech_start - round(LEAD_SECONDS * RATE)
    return u.audio[max(0, start) : u.speech_end + round(TAIL_SECONDS * RATE)]


async def say_to(server: Server, u: Utterance) -> tuple[str, float | None]:
    """One call: the utterance, then silence until a reply to its end starts (or 3 s). (stream sid, latency ms)."""
    caller = SimulatedCaller(server.url, [Pause(0.2), Speak(line_of(u)), WaitForReply("start", timeout=3.0)])
    report = await caller.run()
    if report.rejected or not report.speech_ends:
        raise RuntimeError(f"{server.spec.name}: call failed: {report.rejected or report.events}")
    end = report.speech_ends[-1]
    after = [start for start in report.reply_starts if start >= end]
    return caller.stream_sid, (1000 * (after[0] - end) if after else None)


def turn_log(server: Server) -> dict[str, list[str]]:
    """Each call's turns' reasons, in order, from the server's JSON log."""
    turns: dict[str, list[str]] = {}
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{") and (event := json.loads(line)).get("event") == "turn":
            turns.setdefault(event["call_id"], []).append(event["reason"])
    return turns


def metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def model_wall(server: Server) -> tuple[float, float]:
    """The model's inferences so far: (wall seconds, count), from its /metrics histogram."""
    return (metric(server, "callbridge_end_of_turn_inference_seconds_sum"),
            metric(server, "callbridge_end_of_turn_inference_seconds_count"))


async def run(corpus: list[Utterance], servers: list[Server], parallel: int) -> dict[str, list]:
    """Every utterance to every server at once, `parallel` utterances at a time: (sid, latency) per server."""
    results: dict[str, list] = {s.spec.name: [None] * len(corpus) for s in servers}
    gate = asyncio.Semaphore(parallel)

    async def one(i: int, u: Utterance) -> None:
        async with gate:
            answers = await asyncio.gather(*(say_to(s, u) for s in servers))
            for s, answer in zip(servers, answers, strict=True):
                results[s.spec.name][i] = answer

    await asyncio.gather(*(one(i, u) for i, u in enumerate(corpus)))
    return results


def summarise(corpus: list[Utterance], calls: list, turns: dict[str, list[str]],
              categories: tuple[str, ...]) -> Outcome:
    out = Outcome()
    for u, (sid, latency) in zip(corpus, calls, strict=True):
        if u.category not in categories:
            continue
        reasons = turns.get(sid, [])
        early = max(0, len(reasons) - 1) if latency is not None else len(reasons)
        out.splits += early
        out.split_utterances += bool(early)
        if latency is None:
            out.unanswered += 1
            continue
        out.latencies_ms.append(latency)
        out.reasons[reasons[-1]] = out.reasons.get(reasons[-1], 0) + 1
    return out


def p50_p95(values: list[float]) -> str:
    return f"{np.percentile(values, 50):.0f} / {np.percentile(values, 95):.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["finished", "comma", "hesitation", "list"])
    parser.add_argument("--voices", nargs="+", default=list(ESPEAK_VOICES))
    parser.add_argument("--parallel", type=int, default=2, help="utterances said at the same time (each to every "
                        "server)")
    parser.add_argument("--rules", nargs="+", default=["model 200/0.5/512", "silence 512", "silence 200"],
                        choices=list(RULES), help="the servers to run side by side")
    parser.add_argument("--logs", type=Path, default=ROOT / "bench" / "work" / "turn_phone")
    args = parser.parse_args()
    started = time.time()
    corpus = build(args.voices, (RATE,), args.categories)
    servers = [Server(spec(name, env), args.logs / f"{name.replace(' ', '_').replace('/', '-')}.log")
               for name, env in ((name, RULES[name]) for name in args.rules)]
    try:
        models = [s for s in servers if RULES[s.spec.name]["END_OF_TURN"] == "model"]
        cpu_before = [cpu_seconds(*s.pids) for s in servers]
        model_cpu_before = [metric(s, "callbridge_end_of_turn_cpu_seconds_total") for s in models]
        model_wall_before = [model_wall(s) for s in models]
        wall = time.monotonic()
        results = asyncio.run(run(corpus, servers, args.parallel))
        wall = time.monotonic() - wall
        cpu = [cpu_seconds(*s.pids) - before for s, before in zip(servers, cpu_before, strict=True)]
        model_cpu = [metric(s, "callbridge_end_of_turn_cpu_seconds_total") - before
                     for s, before in zip(models, model_cpu_before, strict=True)]
        wall_each = [(seconds - before[0]) / max(1.0, count - before[1])
                     for (seconds, count), before in zip(map(model_wall, models), model_wall_before, strict=True)]
        questions = [{answer: metric(s, f'callbridge_end_of_turn_questions_total{{answer="{answer}"}}')
                      for answer in ("complete", "incomplete", "stale")} for s in models]
    finally:
        for s in servers:
            s.stop()
    call_seconds = sum(len(line_of(u)) / RATE + 0.2 for u in corpus)  # every server heard all of them
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    counts = {c: sum(u.category == c for u in corpus) for c in args.categories}
    mid = tuple(c for c in MID_SENTENCE if c in args.categories)
    said = ", ".join(f"{n} {c}" for c, n in counts.items())
    print(f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC at {commit.strip()}; {platform.machine()}, "
          f"Python {platform.python_version()}; {len(corpus)} utterances ({said}), voices {', '.join(args.voices)}, "
          f"8 kHz through µ-law; {args.parallel} utterances at a time, each to the {len(servers)} servers at once; "
          f"{wall:.0f} s.\n")
    print("| rule | finished: latency p50 / p95 ms | finished: splits (utterances) | finished: ended by | "
          "mid-sentence: splits (utterances) of " f"{sum(counts.get(c, 0) for c in mid)} | mid-sentence: latency "
          "p50 / p95 ms | server CPU ms per call-second |")
    print("|---|---|---|---|---|---|---|")
    for s, used in zip(servers, cpu, strict=True):
        turns = turn_log(s)
        done = summarise(corpus, results[s.spec.name], turns, ("finished",))
        middle = summarise(corpus, results[s.spec.name], turns, mid)
        ended = ", ".join(f"{reason} {n}" for reason, n in sorted(done.reasons.items()))
        print(f"| {s.spec.name} | {p50_p95(done.latencies_ms)} | {done.splits} ({done.split_utterances}) | {ended} | "
              f"{middle.splits} ({middle.split_utterances}) | {p50_p95(middle.latencies_ms)} | "
              f"{1000 * used / call_seconds:.1f} |")
        if done.unanswered or middle.unanswered:
            print(f"|  (unanswered: {done.unanswered} finished, {middle.unanswered} mid-sentence) |||||||")
    print()
    for s, used_by_model, answers, wall_s in zip(models, model_cpu, questions, wall_each, strict=True):
        asked = sum(answers.values())
        print(f"{s.spec.name}: {asked:.0f} questions ({', '.join(f'{k} {v:.0f}' for k, v in answers.items())}), "
              f"{1000 * used_by_model / max(asked, 1):.0f} ms CPU and {1000 * wall_s:.0f} ms wall per inference, "
              f"{1000 * used_by_model / call_seconds:.1f} ms CPU per call-second "
              "(callbridge_end_of_turn_cpu_seconds, callbridge_end_of_turn_inference_seconds).")
    print(f"{call_seconds:.0f} call-seconds per server; run took {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
