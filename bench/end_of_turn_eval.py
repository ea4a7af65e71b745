"""Offline evaluation of the end-of-turn model against silence rules, over bench/turn_corpus.py.

Each utterance goes through Silero VAD on 32 ms windows (core/vad.py's batcher) at its rate, then through
each turn rule, in audio time (no clock: the same audio gives the same turns):

- `silence P`: core/turns.py's TurnDetector with PAUSE_MS = P (512 today; 200 is what Pipecat does);
- `model S/T/U`: the same detector with PAUSE_MS = U (the upper bound), and once the caller has been silent
  S ms (counted as the detector counts: Silero's hangover windows included) Smart Turn is asked about the
  turn's audio so far (from its pre-roll to now): probability >= T ends the turn there; otherwise the turn
  goes on, and ends at U of silence unless speech resumes (then the next pause asks again).

Per utterance: **latency** = the decision's position - the end of speech, plus, for a model decision, the
model's measured p50 inference CPU time (the answer comes that much after the window that asked); a **split**
is a turn that ended before the end of speech (the caller had more to say). Noise has no turn to end:
every turn ended on it is a false one. Also measured: inference time (single, and a batch of 8) and the
model's CPU per call-second.

    PIPER=/path/to/piper .venv/bin/python bench/end_of_turn_eval.py [--piper-model en_US-joe-medium.onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.turn_corpus import CATEGORIES, ESPEAK_VOICES, RATES, Utterance, build
from callbridge.core.end_of_turn import EndOfTurnModel, log_mel_features, model_file, model_input
from callbridge.core.turns import HANGOVER_WINDOWS, SpeechStarted, TurnConfig, TurnDetector, TurnEnded
from callbridge.core.vad import VadBatcher, load_vad

ROOT = Path(__file__).resolve().parents[1]
SILENCE_POINTS = (150, 200, 250)
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
UPPER_BOUNDS = (512, 1000)
# `model S+E/T/U`: asked at S ms of silence, then again every E ms of the same pause until U.
REASK_POINTS = ((150, 100), (150, 150), (200, 100), (200, 150))
REASK_THRESHOLDS = (0.5, 0.7, 0.8)
REASK_BOUNDS = (512, 800, 1000)
SILENCE_RULES = (200, 512)
SPOKEN = ("finished", "comma", "hesitation", "list", "backchannel", "interruption")
MID_SENTENCE = ("comma", "hesitation", "list")


@dataclass(frozen=True)
class Decision:
    at: int  # sample position of the window that ended the turn
    by_model: bool


def vad_probabilities(corpus: list[Utterance]) -> list[list[tuple[np.ndarray, float]]]:
    """Every utterance's (window, speech probability) in order; all utterances batched, as calls are."""
    async def run() -> list[list[tuple[np.ndarray, float]]]:
        batcher = VadBatcher(load_vad("onnx"), in_thread=False, max_wait=0.0)
        results: list[list[tuple[np.ndarray, float]]] = [[] for _ in corpus]
        for u, result in zip(corpus, results, strict=True):
            stream = batcher.stream(u.rate, lambda window, p, result=result: result.append((window, p)))
            for i in range(0, len(u.audio) - stream.window_samples + 1, stream.window_samples):
                stream.submit(u.audio[i : i + stream.window_samples])
        await batcher.idle()
        await batcher.close()
        return results

    return asyncio.run(run())


def silence_rule(windows: list[tuple[np.ndarray, float]], config: TurnConfig) -> list[Decision]:
    detector = TurnDetector(config)
    return [Decision(event.at, False) for window, p in windows
            if isinstance(event := detector.step(window, p), TurnEnded)]


def model_rule(windows: list[tuple[np.ndarray, float]], config: TurnConfig, silence_ms: int, threshold: float,
               ask: Callable[[int, int], float], every_ms: int | None = None) -> list[Decision]:
    """The turns `model S/T/U` (or `model S+E/T/U`: asked again every E ms of the same pause) ends
    (U = config.pause_ms); `ask(turn_start, now)` gives the probability."""
    query_windows = max(1, config.windows(silence_ms) - HANGOVER_WINDOWS[config.sample_rate])
    every_windows = config.windows(every_ms) if every_ms else 0
    preroll = config.windows(config.preroll_ms) * config.window_samples
    detector, base, speaking, silence, turn_start, decisions = TurnDetector(config), 0, False, 0, 0, []
    for i, (window, p) in enumerate(windows):
        now = (i + 1) * config.window_samples
        event = detector.step(window, p)
        if isinstance(event, SpeechStarted):
            speaking, silence, turn_start = True, 0, max(base, base + event.onset - preroll)
        elif isinstance(event, TurnEnded):
            speaking = False
            decisions.append(Decision(now, False))
        elif speaking:
            silence = 0 if p >= config.exit_threshold else silence + 1
            asking = silence == query_windows or (
                every_windows and silence > query_windows and (silence - query_windows) % every_windows == 0)
            if asking and ask(turn_start, now) >= threshold:
                decisions.append(Decision(now, True))
                detector, base, speaking = TurnDetector(config), now, False  # a fresh turn, as after any end
    return decisions


class Asker:
    """The model's answers, each (utterance, turn start, position) computed once."""

    def __init__(self, model: EndOfTurnModel) -> None:
        self.model = model
        self.answers: dict[tuple[int, int, int], float] = {}

    def for_utterance(self, index: int, u: Utterance) -> Callable[[int, int], float]:
        def ask(start: int, now: int) -> float:
            key = (index, start, now)
            if key not in self.answers:
                self.answers[key] = self.model.probability(u.audio[start:now].astype(np.float32) / 32768, u.rate)
            return self.answers[key]
        return ask


def counting(ask: Callable[[int, int], float], tally: list[int]) -> Callable[[int, int], float]:
    """`ask`, counting its calls in tally[0]."""
    def counted(start: int, now: int) -> float:
        tally[0] += 1
        return ask(start, now)
    return counted


@dataclass
class Outcome:
    latencies: list[float]  # ms from the end of speech to the turn's end, for utterances whose turn ended
    splits: int  # turns ended before the end of speech
    splits_by_model: int  # of which the model ended (the rest: the silence bound)
    split_utterances: int
    unanswered: int  # utterances whose turn never ended (too short to count as speech)
    false_turns: int  # turns ended on noise
    by_model: int  # turns the model ended (the rest: the silence bound)
    utterances: int


def outcome(corpus: list[Utterance], decisions: list[list[Decision]], inference_ms: float) -> Outcome:
    result = Outcome([], 0, 0, 0, 0, 0, 0, len(corpus))
    for u, ends in zip(corpus, decisions, strict=True):
        if u.category == "noise":
            result.false_turns += len(ends)
            continue
        early = [d for d in ends if d.at < u.speech_end]
        result.splits += len(early)
        result.splits_by_model += sum(d.by_model for d in early)
        result.split_utterances += bool(early)
        final = next((d for d in ends if d.at >= u.speech_end), None)
        if final is None:
            result.unanswered += 1
            continue
        result.by_model += final.by_model
        result.latencies.append((final.at - u.speech_end) * 1000 / u.rate + (inference_ms if final.by_model else 0))
    return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def timing(model: EndOfTurnModel, corpus: list[Utterance], rounds: int) -> dict[str, list[float]]:
    """Inference ms per call: one call alone (wall and CPU), and 8 calls as one batch (CPU per call); alternated."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1
    batch_session = onnxruntime.InferenceSession(str(model_file()), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
    turns = [(u.audio[: u.speech_end + u.rate // 5].astype(np.float32) / 32768, u.rate)
             for u in corpus if u.category == "finished"][:8]
    result: dict[str, list[float]] = {"single_wall": [], "single_cpu": [], "batch8_cpu": [], "input_ms": []}
    for _ in range(rounds):
        for audio, rate in turns:
            wall, cpu = time.perf_counter(), time.thread_time()
            model.probability(audio, rate)
            result["single_wall"].append((time.perf_counter() - wall) * 1000)
            result["single_cpu"].append((time.thread_time() - cpu) * 1000)
        cpu = time.thread_time()
        features = np.stack([log_mel_features(model_input(audio, rate)) for audio, rate in turns])
        batch_session.run(None, {"input_features": features})
        result["batch8_cpu"].append((time.thread_time() - cpu) * 1000 / len(turns))
        started = time.perf_counter()
        for audio, rate in turns:
            log_mel_features(model_input(audio, rate))
        result["input_ms"].append((time.perf_counter() - started) * 1000 / len(turns))
    return result


def voice_group(voice: str) -> str:
    return "piper" if voice.startswith("piper:") else "espeak-ng"


def fmt(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piper-model", type=Path, help="also speak with this Piper voice (.onnx)")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (8 calls each)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "end_of_turn.md")
    args = parser.parse_args()
    started = time.time()
    voices = ESPEAK_VOICES + ((f"piper:{args.piper_model}",) if args.piper_model else ())
    corpus = build(voices, RATES, CATEGORIES)
    windows = vad_probabilities(corpus)
    model = EndOfTurnModel()
    times = timing(model, corpus, args.rounds)
    # On an idle core the wall time is the CPU time (one thread, no I/O); the shared machine's is noisier.
    inference_ms = statistics.median(times["single_cpu"])
    asker = Asker(model)
    asks = [asker.for_utterance(i, u) for i, u in enumerate(corpus)]

    # Every rule's decisions on every utterance.
    rules: dict[str, list[list[Decision]]] = {}
    for pause in SILENCE_RULES:
        rules[f"silence {pause}"] = [silence_rule(w, TurnConfig(u.rate, pause_ms=pause))
                                     for u, w in zip(corpus, windows, strict=True)]
    for upper in UPPER_BOUNDS:
        for silence in SILENCE_POINTS:
            for threshold in THRESHOLDS:
                rules[f"model {silence}/{threshold}/{upper}"] = [
                    model_rule(w, TurnConfig(u.rate, pause_ms=upper), silence, threshold, ask)
                    for u, w, ask in zip(corpus, windows, asks, strict=True)]
        # Never complete: the rule must then be the silence rule at its upper bound exactly.
        never = [model_rule(w, TurnConfig(u.rate, pause_ms=upper), 200, 2.0, ask)
                 for u, w, ask in zip(corpus, windows, asks, strict=True)]
        same = [silence_rule(w, TurnConfig(u.rate, pause_ms=upper)) for u, w in zip(corpus, windows, strict=True)]
        assert never == same, "the model rule's silence counting differs from TurnDetector's"

    questions: dict[str, int] = {}  # per model rule: questions asked over the spoken utterances
    for upper in REASK_BOUNDS:
        for silence, every in REASK_POINTS:
            for threshold in REASK_THRESHOLDS:
                rule, tally = f"model {silence}+{every}/{threshold}/{upper}", [0]
                rules[rule] = [model_rule(w, TurnConfig(u.rate, pause_ms=upper), silence, threshold,
                                          counting(ask, tally) if u.category in SPOKEN else ask, every)
                               for u, w, ask in zip(corpus, windows, asks, strict=True)]
                questions[rule] = tally[0]
    for silence in SILENCE_POINTS:  # the one-question rules' counts, for the same table
        for upper in UPPER_BOUNDS:
            tally = [0]
            for u, w, ask in zip(corpus, windows, asks, strict=True):
                if u.category in SPOKEN:
                    model_rule(w, TurnConfig(u.rate, pause_ms=upper), silence, 0.5, counting(ask, tally))
            questions[f"model {silence}/0.5/{upper}"] = tally[0]

    def select(rule: str, rate: int | None, categories: Iterable[str], group: str | None = None) -> Outcome:
        picked = [(u, d) for u, d in zip(corpus, rules[rule], strict=True)
                  if (rate is None or u.rate == rate) and u.category in categories
                  and (group is None or u.category == "noise" or voice_group(u.voice) == group)]
        return outcome([u for u, _ in picked], [d for _, d in picked], inference_ms)

    # The probability the model gives at the end of finished turns and at pauses inside sentences.
    def probabilities_at(silence: int, rate: int, group: str) -> tuple[list[float], list[float]]:
        at_end, inside = [], []
        for i, (u, w) in enumerate(zip(corpus, windows, strict=True)):
            if u.rate != rate or u.category not in SPOKEN or voice_group(u.voice) != group:
                continue
            seen: list[tuple[int, float]] = []
            model_rule(w, TurnConfig(rate), silence, 2.0,
                       lambda start, now, i=i, seen=seen: seen.append((now, asks[i](start, now))) or 0.0)
            for now, p in seen:
                (at_end if now >= u.speech_end else inside).append(p)
        return at_end, inside

    groups = ["espeak-ng"] + (["piper"] if args.piper_model else [])
    lines = report_header(args, corpus, started, inference_ms, times)
    lines += main_table(select, groups)
    lines += reask_table(select, groups, questions, corpus, inference_ms)
    lines += sweep_table(select, groups)
    lines += probability_table(probabilities_at, groups)
    lines += capacity(corpus, windows, times)
    lines += [f"\nRun took {time.time() - started:.0f} s; {len(asker.answers)} model calls.\n"]
    args.out.write_text("\n".join(lines))
    raw = ROOT / "bench" / "work" / "end_of_turn.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({
        "utterances": [{"name": u.name, "speech_end": u.speech_end, "pauses": u.pauses,
                        "decisions": {rule: [(d.at, d.by_model) for d in ds[i]] for rule, ds in rules.items()}}
                       for i, u in enumerate(corpus)],
        "answers": [[corpus[i].name, start, now, p] for (i, start, now), p in asker.answers.items()],
        "timing": times}))
    print(args.out.read_text())


def report_header(args: argparse.Namespace, corpus: list[Utterance], started: float, inference_ms: float,
                  times: dict[str, list[float]]) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    piper = " --piper-model en_US-joe-medium.onnx" if args.piper_model else ""
    counts = {c: sum(u.category == c for u in corpus) for c in CATEGORIES}
    import onnxruntime

    def ms(key: str) -> str:
        return f"{percentile(times[key], 50):.1f} / {percentile(times[key], 95):.1f}"

    return [
        "# End of turn: Smart Turn v3.2 against silence rules (offline, in audio time)",
        "",
        "```sh",
        f"PIPER=/path/to/piper .venv/bin/python bench/end_of_turn_eval.py{piper}",
        "```",
        "",
        f"Run {datetime.datetime.fromtimestamp(started, datetime.UTC):%Y-%m-%d %H:%M} UTC at {commit}; "
        f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores "
        f"(shared VM: other work ran beside it), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, one intra-op thread.",
        "",
        f"Corpus (bench/turn_corpus.py): {len(corpus)} utterances, "
        + ", ".join(f"{n} {c}" for c, n in counts.items())
        + f"; espeak-ng voices {', '.join(ESPEAK_VOICES)}" + (" and Piper en_US-joe-medium" if piper else "")
        + "; each at 8 kHz (through µ-law) and 16 kHz. Method: see the docstring of bench/end_of_turn_eval.py. "
        "`model S/T/U`: ask at S ms of silence, complete when p >= T, else the turn ends at U ms of silence.",
        "",
        "## Inference time on this machine (ms per call, p50 / p95)",
        "",
        "| what | ms |",
        "|---|---:|",
        f"| one call, wall (resample + features + model) | {ms('single_wall')} |",
        f"| one call, CPU | {ms('single_cpu')} |",
        f"| 8 calls as one batch, CPU per call | {ms('batch8_cpu')} |",
        f"| of which resample + features (per call) | {ms('input_ms')} |",
        "",
        f"Model decisions below count {inference_ms:.0f} ms (the p50 CPU time: on an idle core, with one thread "
        f"and no I/O, that is the wall time; this run's wall p50 of {percentile(times['single_wall'], 50):.0f} ms "
        "includes waiting for a core the machine's other work held) after the window that asked.",
        "",
    ]


def main_table(select: Callable[..., Outcome], groups: list[str]) -> list[str]:
    lines = ["## Silence rules against the model", "",
             "Latency: end of speech -> end of turn, ms p50 / p95 (the reply's first audio comes ~17-64 ms after, "
             "README). Splits: turns ended mid-sentence / utterances (utterances split at least once). "
             "Noise: false turns on the 4 noises. Model rows: the recommended setting and its neighbours.", ""]
    chosen = ["silence 200", "silence 512", "model 150/0.5/512", "model 200/0.5/512", "model 200/0.7/512",
              "model 200/0.5/1000"]
    for group in groups:
        lines += [f"### {group}", "",
                  "| rule | rate | finished: latency | finished: by model | finished: splits | comma+hesitation+list: "
                  "splits | their latency | interruption: latency | backchannel: latency (unanswered) | "
                  "noise: false turns |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rule in chosen:
            for rate in RATES:
                fin = select(rule, rate, ["finished"], group)
                mid = select(rule, rate, MID_SENTENCE, group)
                inter = select(rule, rate, ["interruption"], group)
                back = select(rule, rate, ["backchannel"], group)
                noise = select(rule, rate, ["noise"], group)
                lines.append(
                    f"| {rule} | {rate // 1000} kHz | {fmt(percentile(fin.latencies, 50))} / "
                    f"{fmt(percentile(fin.latencies, 95))} | {fin.by_model}/{fin.utterances} | {fin.splits} | "
                    f"{mid.splits} / {mid.utterances} ({mid.split_utterances}) | "
                    f"{fmt(percentile(mid.latencies, 50))} / {fmt(percentile(mid.latencies, 95))} | "
                    f"{fmt(percentile(inter.latencies, 50))} / {fmt(percentile(inter.latencies, 95))} | "
                    f"{fmt(percentile(back.latencies, 50))} / {fmt(percentile(back.latencies, 95))} "
                    f"({back.unanswered}) | {noise.false_turns} |")
        lines.append("")
    return lines


def reask_table(select: Callable[..., Outcome], groups: list[str], questions: dict[str, int],
                corpus: list[Utterance], inference_ms: float) -> list[str]:
    """The re-asking rules beside the one-question rules and the silence rule, in the same run."""
    speech_seconds = sum((u.speech_end - u.speech_start) / u.rate for u in corpus if u.category in SPOKEN)
    lines = ["## Asking again as the silence grows", "",
             "`model S+E/T/U`: asked at S ms of silence, then every E ms (rounded up to whole 32 ms windows: 100 -> "
             "128, 150 -> 160) until U. Latency ms p50 / p95; splits: mid-sentence turns ended early (utterances); "
             "questions: per second of caller speech over every spoken utterance, both rates; CPU: the model's ms "
             f"per call-second with callers speaking half the call, at {inference_ms:.0f} ms per question.", ""]
    one = [f"model {s}/0.5/{u}" for s in (150, 200) for u in UPPER_BOUNDS]
    reask = [f"model {s}+{e}/{t}/{u}" for u in REASK_BOUNDS for s, e in REASK_POINTS for t in REASK_THRESHOLDS]
    for group in groups:
        lines += [f"### {group}", "",
                  "| rule | 8 kHz finished: latency | by model | splits | 8 kHz mid-sentence: splits | "
                  "16 kHz finished: latency | by model | splits | 16 kHz mid-sentence: splits | "
                  "splits, both rates, comma / hesitation / list (by the model + by the bound) | "
                  "backchannel unanswered | noise false turns | questions / s | CPU ms per call-second |",
                  "|---|---|---:|---:|---|---|---:|---:|---|---|---:|---:|---:|---:|"]
        for rule in ["silence 512", *one, *reask]:
            row = f"| {rule} |"
            for rate in RATES:
                fin = select(rule, rate, ["finished"], group)
                mid = select(rule, rate, MID_SENTENCE, group)
                row += (f" {fmt(percentile(fin.latencies, 50))} / {fmt(percentile(fin.latencies, 95))} | "
                        f"{fin.by_model}/{fin.utterances} | {fin.splits} | {mid.splits} ({mid.split_utterances}) |")
            kinds = [select(rule, None, [c], group) for c in MID_SENTENCE]
            row += " " + " / ".join(f"{k.splits_by_model}+{k.splits - k.splits_by_model}" for k in kinds) + " |"
            back = select(rule, None, ["backchannel"], group)
            noise = select(rule, None, ["noise"], group)
            per_second = questions.get(rule, 0) / speech_seconds
            row += (f" {back.unanswered} | {noise.false_turns} | {per_second:.2f} | "
                    f"{per_second * inference_ms / 2:.1f} |")
            lines.append(row)
        lines.append("")
    return lines


def sweep_table(select: Callable[..., Outcome], groups: list[str]) -> list[str]:
    lines = ["## Silence point, threshold, upper bound", "",
             "Finished sentences: share the model calls complete at its one question, and latency p50 / p95 (ms). "
             "Mid-sentence (comma, hesitation, list): turns ended early.", ""]
    for group in groups:
        lines += [f"### {group}", "",
                  "| S ms | T | U ms | 8 kHz: finished complete | latency | mid-sentence splits | "
                  "16 kHz: finished complete | latency | mid-sentence splits |",
                  "|---:|---:|---:|---:|---|---:|---:|---|---:|"]
        for upper in UPPER_BOUNDS:
            for silence in SILENCE_POINTS:
                for threshold in THRESHOLDS:
                    rule = f"model {silence}/{threshold}/{upper}"
                    row = f"| {silence} | {threshold} | {upper} |"
                    for rate in RATES:
                        fin = select(rule, rate, ["finished"], group)
                        mid = select(rule, rate, MID_SENTENCE, group)
                        row += (f" {100 * fin.by_model / max(1, fin.utterances):.0f}% | "
                                f"{fmt(percentile(fin.latencies, 50))} / {fmt(percentile(fin.latencies, 95))} | "
                                f"{mid.splits} |")
                    lines.append(row)
        lines.append("")
    return lines


def probability_table(probabilities_at: Callable[[int, int, str], tuple[list[float], list[float]]],
                      groups: list[str]) -> list[str]:
    lines = ["## What the model says", "",
             "Probability of completion when asked at S ms of silence: at the end of every spoken utterance "
             "(finished, comma, hesitation, list, backchannel, interruption) and at every pause inside one, "
             "quartiles (25 / 50 / 75%).", "",
             "| voices | rate | S ms | at the end: n | p | inside: n | p |", "|---|---|---:|---:|---|---:|---|"]
    for group in groups:
        for rate in RATES:
            for silence in SILENCE_POINTS:
                end, inside = probabilities_at(silence, rate, group)
                q = lambda v: " / ".join(f"{percentile(v, x):.2f}" for x in (25, 50, 75))  # noqa: E731
                lines.append(f"| {group} | {rate // 1000} kHz | {silence} | {len(end)} | {q(end)} | "
                             f"{len(inside)} | {q(inside)} |")
    return [*lines, ""]


def capacity(corpus: list[Utterance], windows: list[list[tuple[np.ndarray, float]]],
             times: dict[str, list[float]]) -> list[str]:
    """How often a caller's pauses ask the model, and what that costs at 128 calls."""
    speech_seconds = sum((u.speech_end - u.speech_start) / u.rate for u in corpus if u.category in SPOKEN)
    cpu = percentile(times["single_cpu"], 50)
    lines = ["## CPU", "",
             "| rule | questions per second of caller speech | model CPU ms per call-second (caller speaking half "
             "the call) | cores at 128 calls |", "|---|---:|---:|---:|"]
    for silence in SILENCE_POINTS:
        asked: list[int] = []  # one question per pause of at least S ms, whatever the answers
        for u, w in zip(corpus, windows, strict=True):
            if u.category in SPOKEN:
                model_rule(w, TurnConfig(u.rate, pause_ms=max(UPPER_BOUNDS)), silence, 2.0,
                           lambda start, now, asked=asked: asked.append(now) or 0.0)
        per_second = len(asked) / speech_seconds
        per_call_second = per_second * cpu / 2
        lines.append(f"| ask at {silence} ms | {per_second:.2f} | {per_call_second:.1f} | "
                     f"{per_call_second * 128 / 1000:.2f} |")
    return [*lines, "", f"{cpu:.0f} ms CPU per question. The whole service measured ~2.5 ms CPU per "
            "call-second before this model (design.md).", ""]


if __name__ == "__main__":
    main()
