"""Codec benchmark: what a 20 ms chunk costs and what it sounds like, for our Resampler and its alternatives.

Run: .venv/bin/python bench/codec_bench.py [--against REV]  (writes bench/results/codec.md; needs soxr, the
`bench` extra). --against REV adds the Resampler of git revision REV as "ours @REV", for old vs new in one run.

Resamplers compared, each used as a stream is used in a call (one object per direction, 20 ms chunks):
ours (codec.Resampler), audioop.ratecv (state carried), scipy.signal.resample_poly called per chunk,
soxr.ResampleStream at 'HQ' (its default) and 'VHQ'. Cost is the mean per chunk over runs of 50 chunks (1 s
of audio: soxr works in bursts, so a per-call median would time only its cheap buffering calls), median over
runs interleaved between methods, after warm-up, pinned to one core. Filter design and cold start (importing
the resampler and designing the call rates' filters, in a fresh process) are timed too.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import itertools
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import scipy
import scipy.signal
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbridge.codec import Resampler, ulaw_decode, ulaw_encode

resample_module = importlib.import_module("callbridge.codec.resample")  # the package's `resample` is the function

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PAIRS = [(8000, 16000), (16000, 8000), (48000, 16000), (16000, 48000), (22050, 8000), (22050, 48000)]
# downsampling: a tone above the new Nyquist
STOPBAND_TONE = {(16000, 8000): 5000, (48000, 16000): 10000, (22050, 8000): 5000}
DESIGN_PAIRS = [*PAIRS, (8000, 48000), (44100, 16000), (11025, 8000), (22050, 16000), (11025, 32000)]
CALL_RATES = (8000, 16000, 24000, 48000)
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
    def __init__(self, from_rate: int, to_rate: int, resampler: type = Resampler) -> None:
        self.process = resampler(from_rate, to_rate).process


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


def load_revision(rev: str) -> ModuleType:
    """callbridge/codec/resample.py as it was at git revision `rev`, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{rev}:callbridge/codec/resample.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"resample_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"resample_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def supports(method: str, from_rate: int, to_rate: int) -> bool:
    """Whether `method` takes this pair (an older Resampler took only the call rates)."""
    try:
        METHODS[method](from_rate, to_rate)
    except ValueError:
        return False
    return True


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


def fit(samples: np.ndarray, rate: int, *freqs: float) -> tuple[list[float], float]:
    """Least-squares sines at `freqs`, fitted together: (amplitudes, residual power = noise + distortion)."""
    t = np.arange(len(samples)) / rate
    waves = [f(2 * np.pi * freq * t) for freq in freqs for f in (np.cos, np.sin)]
    basis = np.column_stack([*waves, np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis, samples, rcond=None)
    amplitudes = [float(np.hypot(*coef[i : i + 2])) for i in range(0, 2 * len(freqs), 2)]
    return amplitudes, float(np.mean((samples - basis @ coef) ** 2))


def steady(out: np.ndarray, to_rate: int) -> np.ndarray:
    edge = to_rate * 2 * CHUNK_MS // 1000  # drop 40 ms at each end: start-up and flush transients
    return out[edge:-edge].astype(np.float64)


def sinad_db(method: str, from_rate: int, to_rate: int) -> float:
    out, _ = streamed(method, from_rate, to_rate, tone(1000, from_rate, 0.5))
    (amplitude,), noise = fit(steady(out, to_rate), to_rate, 1000)
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
        (wanted, image), _ = fit(passed, to_rate, 1000, from_rate - 1000)
        if image < wanted * 1e-6:  # int16 rounding errors repeat with the tone: none need land on the image
            return f"> 120 (image {(from_rate - 1000) / 1000:g}k)"
        ratio = wanted / image
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
    streams = {name: make(from_rate, to_rate) for name, make in METHODS.items() if supports(name, from_rate, to_rate)}
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


def design_rows(modules: dict[str, ModuleType]) -> list[str]:
    """Per pair and implementation: designing its filter (uncached; median of 5), its size and delay."""
    rows = []
    for (from_rate, to_rate), (name, module) in itertools.product(DESIGN_PAIRS, modules.items()):
        module.Resampler(8000, 16000)  # imports what the design needs (scipy.signal, before): not timed here
        times = []
        try:
            for _ in range(5):
                module._design.cache_clear()
                start = time.perf_counter()
                resampler = module.Resampler(from_rate, to_rate)
                times.append(time.perf_counter() - start)
        except ValueError:
            continue
        f = resampler._filter
        taps = f.matrix if hasattr(f, "matrix") else f.phases
        per_output = int((taps != 0).sum(axis=0).max()) if hasattr(f, "matrix") else taps.shape[1]
        rows.append(
            f"| {from_rate}→{to_rate} | {name} | {1000 * float(np.median(times)):.1f} | {per_output} "
            f"| {type(f).__name__.strip('_')} {taps.shape[0]}×{taps.shape[1]} | {taps.nbytes / 1024:.0f} "
            f"| {1000 * resampler.delay_seconds:.2f} |"
        )
    return rows


COLD_START = """
import importlib.util, itertools, sys, time
import numpy as np
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("resample", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["resample"] = module
spec.loader.exec_module(module)
for pair in itertools.permutations({rates}, 2):
    module.Resampler(*pair).process(np.zeros(160, np.int16))
print(1000 * (time.perf_counter() - start), "scipy" in sys.modules)
"""


def cold_start(path: str) -> tuple[float, bool]:
    """In a fresh process (numpy imported): import the resampler, design and run the call rates' filters."""
    runs = []
    for _ in range(5):
        result = subprocess.run(
            [sys.executable, "-c", COLD_START.format(rates=CALL_RATES), path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        runs.append((float(result[0]), result[1] == "True"))
    return float(np.median([ms for ms, _ in runs])), runs[0][1]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also run the Resampler of this git revision")
    args = parser.parse_args()
    modules = {"ours": resample_module}
    if args.against:
        old = f"ours @{args.against}"
        modules[old] = load_revision(args.against)
        METHODS[old] = lambda a, b: Ours(a, b, modules[old].Resampler)
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
        pair = f"{from_rate / 1000:g}k→{to_rate / 1000:g}k"
        for method in costs:
            lag = round(lag_ms(method, from_rate, to_rate), 2) + 0.0  # + 0.0: no "-0.00"
            first, mean, worst = held_ms(method, from_rate, to_rate)
            lines.append(
                f"| {pair} | {method} | {costs[method]:.1f} | {sinad_db(method, from_rate, to_rate):.1f} "
                f"| {rejection_db(method, from_rate, to_rate)} | {edge_error_lsb(method, from_rate, to_rate)} "
                f"| {lag:.2f} | {first:.1f} | {mean:.1f} / {worst:.1f} | {lag + mean + 0.0:.1f} |"
            )
            print(lines[-1], flush=True)
        cells = [pair, f"{costs['ours']:.1f}"]
        if args.against:
            old_cost = costs.get(old)
            cells += [f"{old_cost:.1f}", f"{costs['ours'] / old_cost:.2f}"] if old_cost else ["–", "–"]
        cells += [f"{costs[name]:.1f}" for name in ("soxr HQ", "soxr VHQ")]
        cells += [f"{costs['ours'] / costs[name]:.2f}" for name in ("soxr HQ", "soxr VHQ")]
        summary.append(f"| {' | '.join(cells)} |")
    head = ["pair", "ours µs"]
    if args.against:
        head += [f"{old} µs", f"ours / {old}"]
    head += ["soxr HQ µs", "soxr VHQ µs", "ours / soxr HQ", "ours / soxr VHQ"]
    lines += [
        "",
        f"## Ours against {'the old resampler and ' if args.against else ''}soxr, per 20 ms chunk",
        "",
        f"| {' | '.join(head)} |",
        "|---|" + "---:|" * (len(head) - 1),
        *summary,
        "",
        "## Filter design",
        "",
        "Designing one pair's filter (uncached, median of 5, after any import it needs), "
        "the taps an output needs, the filter's layout and size, and its group delay.",
        "",
        "| pair | method | design ms | taps / output | layout | KiB | delay ms |",
        "|---|---|---:|---:|---|---:|---:|",
        *design_rows(modules),
        "",
        "## Cold start",
        "",
        "A fresh process with numpy imported: import the resampler module, design and run the filters of every "
        f"pair of the call rates {', '.join(f'{rate // 1000}k' for rate in CALL_RATES)} (median of 5).",
        "",
        "| method | ms | imports scipy |",
        "|---|---:|---|",
    ]
    for name, module in modules.items():
        ms, scipy_imported = cold_start(module.__file__)
        lines.append(f"| {name} | {ms:.0f} | {'yes' if scipy_imported else 'no'} |")
    lines += [
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
