"""The end-of-turn corpus: utterances whose end of speech, and every pause inside, is known to the sample.

Spoken by espeak-ng (three voices; sox converts and trims: tests/speech.py, cached under
tests/fixtures/generated/) and, when a Piper voice is given, by Piper's neural voice too, whose prosody is
closer to a person's than espeak-ng's. Built at run time at 8 kHz (the phone: through µ-law and back) and
16 kHz. Categories:

- finished: complete sentences and questions, which should end the turn at once;
- comma: sentences whose commas make espeak-ng (or Piper) pause mid-sentence;
- hesitation: sentences with hesitations ("um", "let me see") at commas, said in one go (so with a comma's
  intonation) and their comma pauses then lengthened to 0.25-0.8 s: a silence rule ends the turn there;
- list: lists and numbers read in groups, some with the longer pauses people make between them;
- backchannel: "yeah", "mm-hmm": short, complete, said while listening;
- interruption: short complete turns that cut in ("wait, stop");
- noise: coughs, clicks, a breath, a noise burst: no speech, so no turn should end.

Each utterance has `LEAD_SECONDS` of silence before and `TAIL_SECONDS` after. `pauses` are the silences of
at least `MIN_PAUSE_MS` inside it (found in the clean audio: espeak-ng's silence is digital zero, Piper's
nearly so): where a silence rule may end the turn too early.

    PIPER=/path/to/piper .venv/bin/python bench/turn_corpus.py [--piper-model en_US-joe-medium.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbridge.codec import resample, ulaw_decode, ulaw_encode
from tests.speech import CACHE, read_wav, speech

ESPEAK_VOICES = ("en-us", "en-gb", "en-us+f1")  # +f2..f4 breathe in their pauses
RATES = (8000, 16000)
LEAD_SECONDS = 0.5
TAIL_SECONDS = 2.0
MIN_PAUSE_MS = 100
QUIET = 164  # 0.5% of full scale: sox's trim threshold in tests/speech.py
SPEED = 160  # espeak-ng words per minute, as the tests speak

FINISHED = (
    "I would like to book an appointment for next Tuesday.",
    "What time do you open tomorrow morning?",
    "The address is twelve Harbor Street.",
    "My name is John Smith.",
    "Can you hear me?",
    "How much does a cleaning cost?",
    "Thank you very much, goodbye.",
    "I need to cancel my appointment.",
)
COMMA = (
    "Well, I was thinking, maybe on Tuesday, if that works for you.",
    "Hello, this is a test call, can you hear me?",
    "If it is not too late, I would like to come in, preferably in the morning.",
    "Actually, now that I think about it, Thursday would be better.",
    "My daughter, who is seven, needs a checkup, and so do I.",
    "Yes, that is right, the one on Harbor Street.",
)
# Sentences said in one go (so commas keep their rising intonation), and how long their comma pauses are
# made, in order: a hesitating caller's silences of 0.25-0.8 s.
HESITATION = (
    ("I would like to book an appointment for, um, next Tuesday.", (0.4, 0.3)),
    ("So the thing is, let me see, I need a new filling.", (0.6, 0.5)),
    ("My insurance is with, uh, Blue Shield.", (0.8, 0.4)),
    ("Could you tell me, um, how long the visit takes?", (0.25, 0.6)),
    ("I was wondering if, well, if you take walk-ins.", (0.5, 0.3)),
    ("The best time for me would be, let me think, after five.", (0.7, 0.4)),
)
LIST = (
    ("I need milk, eggs, bread, and butter.", ()),
    ("My number is five five five, two three four, nine eight seven six.", ()),
    ("My card number is, four one two three, five six seven eight, nine zero one two.", (0.3, 0.5, 0.5)),
    ("The dates are the third, the tenth, and the seventeenth.", (0.4, 0.4)),
    ("It costs one hundred and twenty, no, one hundred and forty dollars.", (0.3, 0.4)),
)
BACKCHANNEL = ("Yeah.", "Uh-huh.", "Okay.", "Mm-hmm.", "Right.", "Sure.", "I see.")
INTERRUPTION = ("Wait, stop.", "No, that is not what I said.", "Hold on a second.", "Sorry, I meant Thursday.",
                "Stop, stop.")
NOISES = ("cough", "clicks", "breath", "noise burst")
CATEGORIES = ("finished", "comma", "hesitation", "list", "backchannel", "interruption", "noise")


@dataclass(frozen=True)
class Utterance:
    category: str
    text: str
    voice: str
    rate: int
    audio: np.ndarray  # int16 at `rate`: what the caller sends (µ-law decoded at 8 kHz)
    speech_start: int  # first sample of speech (or noise)
    speech_end: int  # one past its last sample: the end of the turn
    pauses: tuple[tuple[int, int], ...]  # (start, end) of silences inside it

    @property
    def name(self) -> str:
        return f"{self.category}|{self.voice}|{self.rate}|{self.text}"


def piper_speech(text: str, model: Path, rate: int) -> np.ndarray:
    """`text` spoken by Piper (the `PIPER` command, default `piper`), trimmed as tests/speech.py trims."""
    key = hashlib.sha1(f"piper|{model.name}|{text}|{rate}".encode()).hexdigest()[:16]
    out = CACHE / f"{key}.wav"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        raw, tmp = CACHE / f"{key}.raw.wav", CACHE / f"{key}.tmp.wav"
        subprocess.run([os.environ.get("PIPER", "piper"), "-m", str(model), "-f", str(raw)], input=text.encode(),
                       check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(tmp),
                        "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"],
                       check=True)
        raw.unlink()
        tmp.rename(out)
    return read_wav(out)


def say(text: str, voice: str, rate: int) -> np.ndarray:
    """One phrase, trimmed of silence at both ends; `voice` is an espeak-ng voice or `piper:MODEL`."""
    if voice.startswith("piper:"):
        return piper_speech(text, Path(voice.removeprefix("piper:")), rate)
    return speech(text, rate, voice, SPEED)


def noise(kind: str, rate: int) -> np.ndarray:
    """A non-speech sound, the same every run: made at 16 kHz with a fixed seed, resampled for 8 kHz."""
    random = np.random.default_rng(sum(map(ord, kind)))
    fs = 16000

    def burst(seconds: float, decay: float, level: float, band: tuple[float, float]) -> np.ndarray:
        n = round(seconds * fs)
        spectrum = np.fft.rfft(random.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / fs)
        spectrum[(freqs < band[0]) | (freqs > band[1])] = 0
        shaped = np.fft.irfft(spectrum, n)
        t = np.arange(n) / fs
        envelope = np.minimum(1.0, t / 0.005) * np.exp(-t / decay)
        return level * envelope * shaped / np.max(np.abs(shaped))

    gap = lambda seconds: np.zeros(round(seconds * fs))  # noqa: E731
    if kind == "cough":
        parts = [burst(0.25, 0.07, 0.5, (300, 3500)), gap(0.15), burst(0.2, 0.05, 0.35, (300, 3500))]
    elif kind == "clicks":
        parts = [p for _ in range(3) for p in (burst(0.01, 0.002, 0.6, (50, 7000)), gap(0.2))][:-1]
    elif kind == "breath":
        parts = [0.05 * np.hanning(round(0.4 * fs)) * burst(0.4, 10.0, 1.0, (200, 6000))]
    elif kind == "noise burst":
        parts = [burst(0.6, 10.0, 0.1, (50, 7900))]
    else:
        raise ValueError(f"unknown noise {kind!r}")
    sound = (np.concatenate(parts) * 32767).astype(np.int16)
    return sound if rate == fs else resample(sound, fs, rate)


def find_pauses(audio: np.ndarray, rate: int, start: int, end: int) -> tuple[tuple[int, int], ...]:
    """Runs of quiet samples of at least MIN_PAUSE_MS strictly inside [start, end)."""
    quiet = np.abs(audio[start:end].astype(np.int32)) <= QUIET
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    shortest = MIN_PAUSE_MS * rate // 1000
    return tuple((start + int(a), start + int(b)) for a, b in runs if b - a >= shortest and a > 0 and b < end - start)


def spoken(text: str, pauses: tuple[float, ...], voice: str, rate: int) -> np.ndarray:
    """`text` said in one go, its longest pauses (its commas') made `pauses` seconds long, in order."""
    audio = say(text, voice, rate)
    if not pauses:
        return audio
    found = sorted(find_pauses(audio, rate, 0, len(audio)), key=lambda run: run[1] - run[0])[-len(pauses):]
    if len(found) < len(pauses):
        raise ValueError(f"{voice} made {len(found)} pauses in {text!r}, not {len(pauses)}")
    pieces, done = [], 0
    for (start, end), seconds in zip(sorted(found), pauses, strict=True):
        middle = (start + end) // 2
        pieces += [audio[done:middle], np.zeros(max(0, round(seconds * rate) - (end - start)), np.int16)]
        done = middle
    return np.concatenate([*pieces, audio[done:]])


def utterance(category: str, text: str, sound: np.ndarray, voice: str, rate: int) -> Utterance:
    """Lead silence, the sound, tail silence; µ-law and back at 8 kHz."""
    nonzero = np.flatnonzero(np.abs(sound.astype(np.int32)) > QUIET)
    body = sound[: nonzero[-1] + 1]  # no silence after the last sound
    lead = round(LEAD_SECONDS * rate)
    audio = np.concatenate([np.zeros(lead, np.int16), body, np.zeros(round(TAIL_SECONDS * rate), np.int16)])
    start, end = lead + int(nonzero[0]), lead + len(body)
    pauses = find_pauses(audio, rate, start, end)
    if rate == 8000:
        audio = ulaw_decode(ulaw_encode(audio))
    return Utterance(category, text, voice, rate, audio, start, end, pauses)


def build(voices: Iterable[str] = ESPEAK_VOICES, rates: Iterable[int] = RATES,
          categories: Iterable[str] = CATEGORIES) -> list[Utterance]:
    """Every utterance of the categories in every voice at every rate (noise once per rate)."""
    voices, rates, wanted = tuple(voices), tuple(rates), set(categories)
    sentences: dict[str, tuple[tuple[str, tuple[float, ...]], ...]] = {
        "finished": tuple((text, ()) for text in FINISHED),
        "comma": tuple((text, ()) for text in COMMA),
        "hesitation": HESITATION,
        "list": LIST,
        "backchannel": tuple((text, ()) for text in BACKCHANNEL),
        "interruption": tuple((text, ()) for text in INTERRUPTION),
    }
    corpus = []
    for rate in rates:
        for category, items in sentences.items():
            if category in wanted:
                corpus += [utterance(category, text, spoken(text, pauses, voice, rate), voice, rate)
                           for voice in voices for text, pauses in items]
        if "noise" in wanted:
            corpus += [utterance("noise", kind, noise(kind, rate), "synthetic", rate) for kind in NOISES]
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piper-model", type=Path, help="also speak with this Piper voice (.onnx)")
    args = parser.parse_args()
    voices = ESPEAK_VOICES + ((f"piper:{args.piper_model}",) if args.piper_model else ())
    for u in build(voices):
        pauses = ", ".join(f"{(b - a) * 1000 // u.rate} ms at {(a - u.speech_start) / u.rate:.2f} s"
                           for a, b in u.pauses)
        print(f"{u.category:12} {u.voice[:12]:12} {u.rate:5} {(u.speech_end - u.speech_start) / u.rate:5.2f} s"
              f"  {u.text[:50]:50}  pauses: {pauses or '-'}")


if __name__ == "__main__":
    main()
