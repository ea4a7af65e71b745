"""Codec benchmark: what a 20 ms chunk costs and what it sounds like, for our Resampler and its alternatives.

Run: .venv/bin/python bench/codec_bench.py  (writes bench/results/codec.md; needs soxr, the `bench` extra)

Resamplers compared, each used as a stream is used in a call (one object per direction, 20 ms chunks):
ours (codec.Resampler), audioop.ratecv (state carried), scipy.signal.resample_poly called per chunk,
soxr.ResampleStream at 'HQ' (its default) and 'VHQ'. Cost is the mean per chunk over runs of 50 chunks (1 s
of audio: soxr works in bursts, so a per-call median would time only its cheap buffering calls), median over
runs interleaved between methods, after warm-up, pinned to one core.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import scipy.signal
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbridge.codec import Resampler, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PAIRS = [(8000, 16000), (16000, 8000), (48000, 16000), (16000, 48000)]
STOPBAND_TONE = {(16000, 8000): 5000, (48000, 16000): 10000}  # downsampling: a tone above the new Nyquist
CHUNK_MS = 20
AMPLITUDE = 16384  # -6 dBFS
RUN_CHUNKS = 50
RUNS = 100
RESULTS = Path(__file__).resolve().parent / "results" / "codec.md"


class Stream:
    """One resampling stream: process() per chunk, finish() for whatever the method still holds."""

    def process(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def finish(self) -> np.ndarray:
        return np.zeros(0, np.int16)


class Ours(Stream):
    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.process = Resampler(from_rate, to_rate).process


class Ratecv(Stream):
    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.rates = (from_rate, to_rate)
        self.state = None

    def process(self, chunk: np.ndarray) -> np.ndarray:
        out, self.state = audioop.ratecv(chunk.tobytes(), 2, 1, *self.rates, self.state)
        return np.frombuffer(out, np.int16)


class ResamplePoly(Stream):
    def __init__(self, from_rate: int, to_rate: int) -> None:
        common = math.gcd(from_rate, to_rate)
        self.up, self.down = to_rate // common, from_rate // common

    def process(self, chunk: np.ndarray) -> np.ndarray:
        out = scipy.signal.resample_poly(chunk, self.up, self.down)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class Soxr(Stream):
    def __init__(self, from_rate: int, to_rate: int, quality: str) -> None:
        self.stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16", quality=quality)
        self.process = self.stream.resample_chunk

    def finish(self) -> np.ndarray:
        return self.stream.resample_chunk(np.zeros(0, np.int16), last=True)


METHODS: dict[str, Callable[[int, int], Stream]] = {
    "ours": Ours,
    "audioop.ratecv": Ratecv,
    "resample_poly per chunk": ResamplePoly,
    "soxr HQ": lambda a, b: Soxr(a, b, "HQ"),
    "soxr VHQ": lambda a, b: Soxr(a, b, "VHQ"),
}


def chunks(signal: np.ndarray, rate: int) -> list[np.ndarray]:
    size = rate * CHUNK_MS // 1000
    return [signal[i : i + size] for i in range(0, len(signal), size)]


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(AMPLITUDE * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def streamed(method: str, from_rate: int, to_rate: int, signal: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The whole output of streaming `signal` in 20 ms chunks, and the output count after each chunk."""
    stream = METHODS[method](from_rate, to_rate)
    parts, counts = [], []
    for chunk in chunks(signal, from_rate):
        parts.append(stream.process(chunk))
        counts.append((counts[-1] if counts else 0) + len(parts[-1]))
    parts.append(stream.finish())
    return np.concatenate(parts), counts


def one_shot(method: str, from_rate: int, to_rate: int, signal: np.ndarray) -> np.ndarray:
    stream = METHODS[method](from_rate, to_rate)
    return np.concatenate([stream.process(signal), stream.finish()])


def fit(samples: np.ndarray, rate: int, freq: float) -> tuple[float, float]:
    """Least-squares sine at `freq`: (amplitude, residual power = noise + distortion)."""
    t = np.arange(len(samples)) / rate
    basis = np.column_stack([np.cos(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis, samples, rcond=None)
    return float(np.hypot(coef[0], coef[1])), float(np.mean((samples - basis @ coef) ** 2))


def steady(out: np.ndarray, to_rate: int) -> np.ndarray:
    edge = to_rate * 2 * CHUNK_MS // 1000  # drop 40 ms at each end: start-up and flush transients
    return out[edge:-edge].astype(np.float64)


def sinad_db(method: str, from_rate: int, to_rate: int) -> float:
    out, _ = streamed(method, from_rate, to_rate, tone(1000, from_rate, 0.5))
    amplitude, noise = fit(steady(out, to_rate), to_rate, 1000)
    return 10 * math.log10(amplitude**2 / 2 / noise)


def rejection_db(method: str, from_rate: int, to_rate: int) -> str:
    """Downsampling: a stopband tone's output vs a 1 kHz tone's. Upsampling: the 1 kHz tone's image."""
    passed = steady(streamed(method, from_rate, to_rate, tone(1000, from_rate, 0.5))[0], to_rate)
    if from_rate > to_rate:
        freq = STOPBAND_TONE[(from_rate, to_rate)]
        leaked = steady(streamed(method, from_rate, to_rate, tone(freq, from_rate, 0.5))[0], to_rate)
        if not leaked.any():
            return "> 92 (all rounds to 0)"
        ratio = np.sqrt(np.mean(passed**2) / np.mean(leaked**2))
        label = f"{freq / 1000:g}k"
    else:
        ratio = fit(passed, to_rate, 1000)[0] / fit(passed, to_rate, from_rate - 1000)[0]
        label = f"image {(from_rate - 1000) / 1000:g}k"
    return f"{20 * math.log10(ratio):.1f} ({label})"


def test_mix(rate: int, seconds: float = 0.5) -> np.ndarray:
    """Speech-band tones plus noise, about -10 dBFS: a stand-in for a voice."""
    rng = np.random.default_rng(1)
    t = np.arange(int(rate * seconds)) / rate
    mix = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (220, 470, 1130, 2410, 3150))
    mix = 2000 * mix + rng.normal(0, 1000, len(t))
    return np.clip(np.rint(mix), -32768, 32767).astype(np.int16)


def edge_error_lsb(method: str, from_rate: int, to_rate: int) -> int:
    """Worst difference between streaming in 20 ms chunks and one call with everything: clicks at edges."""
    signal = test_mix(from_rate)
    chunked, _ = streamed(method, from_rate, to_rate, signal)
    whole = one_shot(method, from_rate, to_rate, signal)
    n = min(len(chunked), len(whole))
    return int(np.abs(chunked[:n].astype(np.int32) - whole[:n]).max())


def lag_ms(method: str, from_rate: int, to_rate: int) -> float:
    """When a chirp comes out of the (flushed) stream, against when it went in: the filter's own delay."""
    seconds, low, high = 0.2, 200.0, 0.35 * min(from_rate, to_rate)

    def chirp(rate: int) -> np.ndarray:
        t = np.arange(int(rate * seconds)) / rate
        phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds))
        return AMPLITUDE * np.hanning(len(t)) * np.sin(phase)

    padded = np.concatenate([np.rint(chirp(from_rate)), np.zeros(from_rate // 10)]).astype(np.int16)
    out, _ = streamed(method, from_rate, to_rate, padded)
    xcorr = np.correlate(out.astype(np.float64), chirp(to_rate), "full")
    peak = int(np.argmax(xcorr))
    before, at, after = xcorr[peak - 1 : peak + 2]
    offset = 0.5 * (before - after) / (before - 2 * at + after)
    return 1000 * (peak + offset - (int(to_rate * seconds) - 1)) / to_rate


def held_ms(method: str, from_rate: int, to_rate: int) -> tuple[float, float, float]:
    """Audio the stream holds back after each chunk (due output count minus produced): first, mean, max."""
    signal = test_mix(from_rate, 1.0)
    _, counts = streamed(method, from_rate, to_rate, signal)
    size = from_rate * CHUNK_MS // 1000
    held = [
        1000 * (math.ceil((i + 1) * size * to_rate / from_rate) - produced) / to_rate
        for i, produced in enumerate(counts)
    ]
    return held[0], float(np.mean(held)), max(held)


def cost_us(from_rate: int, to_rate: int) -> dict[str, float]:
    """Mean cost per 20 ms chunk over runs of 50 chunks; median over interleaved runs."""
    feed = chunks(test_mix(from_rate, 1.0), from_rate)
    streams = {name: make(from_rate, to_rate) for name, make in METHODS.items()}
    for stream in streams.values():
        for chunk in feed * 4:  # warm-up
            stream.process(chunk)
    runs: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(RUNS):
        for name, stream in streams.items():
            process = stream.process
            start = time.perf_counter_ns()
            for chunk in feed[:RUN_CHUNKS]:
                process(chunk)
            runs[name].append((time.perf_counter_ns() - start) / RUN_CHUNKS / 1000)
    return {name: float(np.median(values)) for name, values in runs.items()}


def per_call_us(call: Callable[[], object], calls: int = 20000) -> float:
    for _ in range(1000):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1000


def g711_rows() -> list[str]:
    pcm = test_mix(8000)[:160]
    ulaw = ulaw_encode(pcm)
    pcm_bytes = pcm.tobytes()
    rows = [
        ("ulaw_decode (bytes -> int16 array)", lambda: ulaw_decode(ulaw)),
        ("audioop.ulaw2lin (bytes -> bytes)", lambda: audioop.ulaw2lin(ulaw, 2)),
        ("ulaw_encode (int16 array -> bytes)", lambda: ulaw_encode(pcm)),
        ("audioop.lin2ulaw (bytes -> bytes)", lambda: audioop.lin2ulaw(pcm_bytes, 2)),
    ]
    return [f"| {name} | {per_call_us(call):.2f} |" for name, call in rows]


def machine() -> list[str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- cpu: {model}; nproc {os.cpu_count()}; benchmark pinned to one core",
        f"- python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"soxr {soxr.__version__}",
    ]


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    lines = ["# Codec benchmark", "", "Written by `bench/codec_bench.py`.", "", *machine(), ""]
    lines += [
        "## Resampling, streamed in 20 ms chunks",
        "",
        "SINAD: 1 kHz tone at -6 dBFS, sine fitted by least squares, residual = noise + distortion. Rejection: "
        "a stopband tone against the 1 kHz tone at the same level (downsampling), or the 1 kHz tone's image "
        "(upsampling). Edge error: worst difference between the chunked stream and one call with the whole "
        "signal. Lag: where a chirp comes out of the flushed stream (the filter's delay). Held: output due "
        "but not yet produced after a chunk. Added latency = lag + mean held.",
        "",
        "| pair | method | µs / chunk | SINAD dB | rejection dB | edge error LSB | lag ms "
        "| held after 1st chunk ms | held mean / max ms | added latency ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for from_rate, to_rate in PAIRS:
        costs = cost_us(from_rate, to_rate)
        pair = f"{from_rate // 1000}k→{to_rate // 1000}k"
        for method in METHODS:
            lag = round(lag_ms(method, from_rate, to_rate), 2) + 0.0  # + 0.0: no "-0.00"
            first, mean, worst = held_ms(method, from_rate, to_rate)
            lines.append(
                f"| {pair} | {method} | {costs[method]:.1f} | {sinad_db(method, from_rate, to_rate):.1f} "
                f"| {rejection_db(method, from_rate, to_rate)} | {edge_error_lsb(method, from_rate, to_rate)} "
                f"| {lag:.2f} | {first:.1f} | {mean:.1f} / {worst:.1f} | {lag + mean + 0.0:.1f} |"
            )
            print(lines[-1], flush=True)
        summary.append(
            f"| {pair} | {costs['ours']:.1f} | {costs['soxr HQ']:.1f} | {costs['soxr VHQ']:.1f} "
            f"| {costs['ours'] / costs['soxr HQ']:.2f} | {costs['ours'] / costs['soxr VHQ']:.2f} |"
        )
    lines += [
        "",
        "## Ours against soxr, per 20 ms chunk",
        "",
        "| pair | ours µs | soxr HQ µs | soxr VHQ µs | ours / soxr HQ | ours / soxr VHQ |",
        "|---|---:|---:|---:|---:|---:|",
        *summary,
        "",
        "## G.711 µ-law, per 20 ms frame (160 samples), median per call",
        "",
        "| operation | µs |",
        "|---|---:|",
        *g711_rows(),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
