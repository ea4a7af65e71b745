"""Backchannels, noises and interruptions said over a reply: does the reply survive the first two and stop for
the third? (BACKCHANNEL_RESUME, BACKCHANNEL_MAX_MS)

Each 8 kHz utterance of bench/turn_corpus.py (backchannel, noise, interruption; espeak-ng voices, through
µ-law), one-word interruptions the corpus lacks (`SHORT_INTERRUPTIONS`: as short as a backchannel, so
only the words can tell them apart), and other backchannels and short interruptions held out from any tuning
(`OTHER_BACKCHANNELS`, `OTHER_INTERRUPTIONS`), is spoken over a 30 s reply, driven through a real Call (the real VAD,
no sockets): the reply starts, the caller has heard its first second (its marks confirmed, as a transport
would), then the utterance (its 0.5 s of lead silence, the sound, 2 s of silence) arrives, one VAD window at
a time. Two verdicts on a short turn: `base`, the Bot default (every short sound is a backchannel: the bound
alone decides), and `assistant`, AssistantBot.is_backchannel (the shipped Whisper tiny.en, then the
backchannel words). Outcomes:

- resumed: held, then resumed at the last point heard (checked: the next frame is the one after it);
- kept: no barge-in at all (the VAD never heard speech): the reply plays on;
- cancelled (bound): the speech went past BACKCHANNEL_MAX_MS; cancelled (verdict): the bot said no backchannel.

The speech lengths are the VAD's (first speech window to last, as the Call measures them against the bound).

    .venv/bin/python bench/backchannel.py [--max-ms 800] [--out bench/results/backchannel.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.end_of_turn_eval import vad_probabilities
from bench.turn_corpus import ESPEAK_VOICES, Utterance, build, spoken, utterance
from callbridge.bots.assistant.bot import AssistantBot, Stages
from callbridge.bots.assistant.script import ScriptBrain
from callbridge.bots.assistant.stt import LocalWhisper
from callbridge.bots.assistant.tts import EspeakTTS
from callbridge.bots.base import Audio, Bot, CallInfo, Turn
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, PlaybackMark
from callbridge.core.playback import RESUME_POINT_FRAMES
from callbridge.core.turns import SpeechStarted, TurnConfig, TurnDetector, TurnEnded
from callbridge.core.vad import VadBatcher, load_vad
from callbridge.sessions.registry import MemoryRegistry

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
FRAME = 160
HEARD_FRAMES = 2 * RESUME_POINT_FRAMES  # the caller has heard the reply's first second
SHORT_INTERRUPTIONS = ("No.", "Wait.", "Stop.", "What?", "Hold on.", "Sorry?")
#: Held out: short turns no tuning looked at (the assistant's decoding prompt names the corpus's words), to see
#: whether what helps the corpus helps other backchannels and interruptions too.
OTHER_BACKCHANNELS = ("Got it.", "Yep.", "Alright.", "Exactly.", "Oh, okay.", "Yes.", "Mhm.", "Cool.")
OTHER_INTERRUPTIONS = ("Hang on.", "Excuse me?", "Pardon?", "Nope.", "Actually.", "Listen.", "Why?", "Hey.")
EXTRA = {"short interruption": SHORT_INTERRUPTIONS, "other backchannel": OTHER_BACKCHANNELS,
         "other short interruption": OTHER_INTERRUPTIONS}
CATEGORIES = ("backchannel", "noise", "interruption", *EXTRA)
OUTCOMES = ("resumed", "kept", "cancelled (bound)", "cancelled (verdict)")
SWEEP_MS = (500, 600, 700, 800, 900, 1000, 1200)


class LongReply(Bot):
    """A 30 s reply (its greeting) whose 20 ms frame k is all k + 1: any frame says where in it it is."""

    input_rate = 16000

    def __init__(self, call: CallInfo, judge: AssistantBot | None) -> None:
        super().__init__(call)
        self.judge = judge
        self.answered = 0

    async def greet(self):
        for chunk in range(300):
            yield Audio(np.repeat(np.arange(chunk * 5, chunk * 5 + 5) + 1, FRAME).astype(np.int16), RATE)
            await asyncio.sleep(0.002)

    async def reply(self, turn: Turn):
        self.answered += 1
        return
        yield

    async def is_backchannel(self, turn: Turn) -> bool:
        return await (self.judge.is_backchannel(turn) if self.judge else super().is_backchannel(turn))


class Transcripts(logging.Handler):
    """What the assistant heard in each short turn (its `assistant_backchannel` log line)."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", "") == "assistant_backchannel":
            self.heard.append(str(record.args[1]))


@dataclass
class Result:
    utterance: Utterance
    verdict: str
    outcome: str
    transcript: str = ""
    resumed_at_frame: int | None = None
    answered: bool = False


def logs(items: list) -> list:
    return [i.data for i in items if isinstance(i, ClientMessage) and i.type == "log"]


async def over_a_reply(u: Utterance, batcher: VadBatcher, judge: AssistantBot | None, max_ms: int) -> Result:
    session = MemoryRegistry(2).open_here("bench", "bench")
    bot = LongReply(CallInfo("bench", "bench"), judge)
    call = Call(session, bot, batcher, inbound_rate=RATE, outbound_rate=RATE, turn_config=TurnConfig(RATE),
                backchannel_resume=True, backchannel_max_ms=max_ms)
    call.start()
    items: list = []
    while sum(isinstance(i, AudioOut) for i in items) < 3 * HEARD_FRAMES:
        await asyncio.sleep(0.005)
        while (item := call.outbox.get_nowait()) is not None:
            items.append(item)
    frames = 0
    for item in items:
        frames += isinstance(item, AudioOut)
        if isinstance(item, PlaybackMark) and frames <= HEARD_FRAMES:
            call.playback_finished(item.name)
    after: list = []
    window = call.detector.config.window_samples
    for start in range(0, len(u.audio) - window + 1, window):
        call.push_audio(u.audio[start : start + window])
        await batcher.idle()
        await asyncio.sleep(0)
    for _ in range(500):  # the verdict: Whisper on a short turn takes a few hundred ms
        while (item := call.outbox.get_nowait()) is not None:
            after.append(item)
        said = logs(after)
        if "barge_in" not in said or "reply_resumed" in said or "reply_cancelled" in said:
            break
        await asyncio.sleep(0.01)
    result = Result(u, "assistant" if judge else "base", "kept")
    if "reply_resumed" in said:
        result.outcome = "resumed"
        resumed = next(n for n, item in enumerate(after) if isinstance(item, ClientMessage)
                       and item.data == "reply_resumed")
        replayed = [item for item in after[resumed:] if isinstance(item, AudioOut)]
        result.resumed_at_frame = int(replayed[0].samples[0]) if replayed else None
    elif "reply_cancelled" in said:
        ended = "pause_detected" in said and said.index("pause_detected") < said.index("reply_cancelled")
        result.outcome = "cancelled (verdict)" if ended else "cancelled (bound)"
    await asyncio.sleep(0.05)
    result.answered = bot.answered > 0
    await call.close()
    return result


def speech_lengths(corpus: list[Utterance]) -> list[float]:
    """The VAD's length of each utterance's first run of speech (onset to the turn's last speech window), s."""
    lengths = []
    for windows in vad_probabilities(corpus):
        detector, onset, length = TurnDetector(TurnConfig(RATE)), None, 0.0
        for window, p in windows:
            event = detector.step(window, p)
            if isinstance(event, SpeechStarted) and onset is None:
                onset = event.onset
            elif isinstance(event, TurnEnded) and onset is not None and not length:
                length = (event.speech_end - onset) / RATE
        lengths.append(length)
    return lengths


async def run_all(corpus: list[Utterance], max_ms: int) -> list[Result]:
    batcher = VadBatcher(load_vad("onnx"), in_thread=False, max_wait=0.0)
    stt = LocalWhisper()
    await asyncio.to_thread(stt.load)
    judge = AssistantBot(CallInfo("bench", "bench"), Stages(stt, ScriptBrain.from_file(), EspeakTTS()))
    transcripts = Transcripts()
    logging.getLogger("callbridge.assistant").addHandler(transcripts)
    logging.getLogger("callbridge.assistant").setLevel(logging.INFO)
    results = []
    for verdict in (None, judge):
        for u in corpus:
            before = len(transcripts.heard)
            result = await over_a_reply(u, batcher, verdict, max_ms)
            if len(transcripts.heard) > before:
                result.transcript = " / ".join(transcripts.heard[before:])
            results.append(result)
    await batcher.close()
    return results


def table(results: list[Result], verdict: str) -> list[str]:
    lines = [f"| category ({verdict}) | n | " + " | ".join(OUTCOMES) + " | turn answered |",
             "|---|---:|" + "---:|" * (len(OUTCOMES) + 1)]
    for category in CATEGORIES:
        rows = [r for r in results if r.verdict == verdict and r.utterance.category == category]
        count = Counter(r.outcome for r in rows)
        lines.append(f"| {category} | {len(rows)} | " + " | ".join(str(count[o]) for o in OUTCOMES)
                     + f" | {sum(r.answered for r in rows)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-ms", type=int, default=800, help="BACKCHANNEL_MAX_MS")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backchannel.md")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    corpus = build(rates=(RATE,), categories=CATEGORIES) + [
        utterance(category, text, spoken(text, (), voice, RATE), voice, RATE)
        for category, texts in EXTRA.items() for voice in ESPEAK_VOICES for text in texts]
    lengths = speech_lengths(corpus)
    results = asyncio.run(run_all(corpus, args.max_ms))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    out = ["# Backchannels, noises and interruptions over a reply", "", "```sh",
           f".venv/bin/python bench/backchannel.py --max-ms {args.max_ms}", "```", "",
           f"Run {started:%Y-%m-%d %H:%M} UTC at {commit}; {platform.machine()}, {len(os.sched_getaffinity(0))} cores "
           f"(shared), Python {platform.python_version()}. Method: the docstring of bench/backchannel.py. "
           f"BACKCHANNEL_MAX_MS={args.max_ms}, a resume point every {RESUME_POINT_FRAMES * 20} ms; 8 kHz, "
           "espeak-ng voices en-us, en-gb, en-us+f1 (noises: synthetic, once).", "",
           "## Speech length as the VAD measures it (s: min / median / max)", "",
           "| category | n | utterance (sox-trimmed) | VAD speech |", "|---|---:|---|---|"]
    for category in CATEGORIES:
        picked = [(u, length) for u, length in zip(corpus, lengths, strict=True) if u.category == category]
        sound = [(u.speech_end - u.speech_start) / RATE for u, _ in picked]
        vad = [length for _, length in picked if length]
        fmt = lambda xs: f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}" if xs else "-"  # noqa: E731
        out.append(f"| {category} | {len(picked)} | {fmt(sound)} | {fmt(vad)} ({len(picked) - len(vad)} no speech) |")
    out += ["", "By length alone (the `base` verdict), per bound: backchannels + noises cancelled, the corpus's "
            "interruptions let resume.", "", "| BACKCHANNEL_MAX_MS | " + " | ".join(map(str, SWEEP_MS)) + " |",
            "|---|" + "---:|" * len(SWEEP_MS)]
    short = [length for u, length in zip(corpus, lengths, strict=True)
             if u.category in ("backchannel", "noise") and length]
    long = [length for u, length in zip(corpus, lengths, strict=True) if u.category == "interruption"]
    out.append("| backchannels + noises cancelled | " + " | ".join(
        str(sum(length * 1000 > ms for length in short)) for ms in SWEEP_MS) + " |")
    out.append("| interruptions resumed | " + " | ".join(
        str(sum(length * 1000 <= ms for length in long)) for ms in SWEEP_MS) + " |")
    out += ["", "## Over a reply, through the Call", ""]
    for verdict in ("base", "assistant"):
        out += [*table(results, verdict), ""]
    wrong = [r for r in results if r.outcome == "resumed" and r.resumed_at_frame != HEARD_FRAMES + 1]
    out += [f"Every resumed reply went on at frame {HEARD_FRAMES + 1}, the one after the last point heard: "
            f"{'yes' if not wrong else f'no ({len(wrong)} did not)'}.", "",
            "## What the assistant heard in each short turn", "",
            "| category | voice | text | VAD speech s | heard | outcome |", "|---|---|---|---:|---|---|"]
    for r in results:
        if r.verdict == "assistant":
            length = lengths[corpus.index(r.utterance)]
            out.append(f"| {r.utterance.category} | {r.utterance.voice} | {r.utterance.text} | {length:.2f} | "
                       f"{r.transcript!r} | {r.outcome} |")
    args.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
