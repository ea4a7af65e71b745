"""Speech fixtures made at test time with espeak-ng and sox (no downloaded corpora).

Generated WAVs are cached under tests/fixtures/generated/ (git-ignored), keyed by text, voice and rate.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

CACHE = Path(__file__).parent / "fixtures" / "generated"


def have_tools() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def speech(text: str, sample_rate: int = 8000, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng, mono int16 at `sample_rate`, with leading/trailing silence trimmed."""
    key = hashlib.sha1(f"{text}|{voice}|{speed}|{sample_rate}".encode()).hexdigest()[:16]
    out = CACHE / f"{key}.wav"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        raw = CACHE / f"{key}.raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
        tmp = CACHE / f"{key}.tmp.wav"
        subprocess.run(
            ["sox", "-R", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(tmp),
             "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"],
            check=True,
        )
        raw.unlink()
        tmp.rename(out)
    return read_wav(out)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).copy()


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    return np.zeros(round(seconds * sample_rate), dtype=np.int16)


def peak_correlation(reply: np.ndarray, said: np.ndarray) -> float:
    """Peak normalised cross-correlation of two signals at their best alignment (1.0: identical shape)."""
    a = np.asarray(reply, dtype=np.float64)
    b = np.asarray(said, dtype=np.float64)
    if len(a) < len(b):
        a, b = b, a
    corr = np.correlate(a, b, mode="valid")
    energy = np.sqrt(np.convolve(a * a, np.ones(len(b)), mode="valid")) * np.linalg.norm(b)
    return float(np.max(np.abs(corr) / (energy + 1e-9)))


def split_at_longest_pause(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The speech before and after the longest pause inside `audio` (espeak-ng's pauses are digital silence),
    the pause left out: put a chosen silence between them for a caller who hesitates there, mid-sentence,
    with the words' intonation of a sentence said in one go."""
    quiet = np.abs(audio.astype(np.int32)) <= 164  # 0.5% of full scale, the trim threshold above
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    runs = [(a, b) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
            if a > 0 and b < len(audio)]
    start, end = max(runs, key=lambda run: run[1] - run[0])
    return audio[:start], audio[end:]
