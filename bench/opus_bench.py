"""Opus per 20 ms frame: PyAV (FFmpeg's libopus wrapper, what the WebRTC path used) against libopus through
ctypes (callbridge.edge.opus), on the load's speech, mono 32 kbps, complexity 5, as the WebRTC path codes it.

Run: PYTHONPATH=. .venv/bin/python bench/opus_bench.py   (writes bench/results/opus.md)

With the `pesq` package installed (`.venv/bin/pip install pesq`: ITU-T P.862, built from source, not in the
bench extra), it adds what the encoder's application and complexity cost and how they sound: PESQ-WB of three
espeak-ng voices coded at 16 kHz and decoded back.

Encode: the bot's voice at 48 kHz (before) and at the Call's 16 kHz (now). Decode: what a browser sends (48 kHz
speech, fullband) to the 48 kHz PyAV always yields, and with libopus straight to the Call's 16 kHz. Each cost
is the mean over the whole utterance (~250 frames), the median of rounds that alternate the methods.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.load import load_phrases
from callbridge.codec import resample
from callbridge.edge import opus

OUT = Path(__file__).resolve().parent / "results" / "opus.md"
ROUNDS = 15


def speech(rate: int) -> list[np.ndarray]:
    phrases = load_phrases()
    pcm = resample(np.concatenate([phrases.hello, phrases.story]), 8000, rate).astype(np.int16)
    step = rate // 50
    return [pcm[k : k + step] for k in range(0, len(pcm) - step + 1, step)]


def pyav_encoder(rate: int) -> Callable[[np.ndarray], bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout, codec.sample_rate = opus.BITRATE, "s16", "mono", rate
    codec.time_base = opus.TIME_BASE
    codec.options = {"application": "voip", "compression_level": str(opus.COMPLEXITY)}
    pts = iter(range(0, 1 << 62, rate // 50))

    def encode(frame: np.ndarray) -> bytes:
        audio = av.AudioFrame.from_ndarray(frame.reshape(1, -1), format="s16", layout="mono")
        audio.sample_rate, audio.pts = rate, next(pts)
        return b"".join(bytes(p) for p in codec.encode(audio))
    return encode


def pyav_decoder() -> Callable[[bytes], np.ndarray]:
    codec = av.CodecContext.create("libopus", "r")
    codec.format, codec.layout, codec.sample_rate = "s16", "mono", 48000

    def decode(data: bytes) -> np.ndarray:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in codec.decode(av.Packet(data))])
    return decode


def ctypes_decoder(rate: int) -> Callable[[bytes], np.ndarray]:
    heard: list[np.ndarray] = []
    voice = opus.CallerVoice(heard.append, rate)

    def decode(data: bytes) -> np.ndarray:
        voice.decode(data)
        return heard.pop()
    return decode


def per_frame_us(make: Callable[[], Callable], inputs: list) -> float:
    work = make()  # a fresh coder per round, as each call has its own
    started = time.perf_counter()
    for item in inputs:
        work(item)
    return 1e6 * (time.perf_counter() - started) / len(inputs)


def quality_rows() -> list[str]:
    """µs per frame and PESQ-WB for the encoder's applications and complexities (needs `pesq`)."""
    try:
        from pesq import pesq
    except ImportError:
        return ["", "(PESQ not measured: `pip install pesq` to add the quality table.)"]
    from tests.speech import speech as espeak

    texts = ("Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat.",
             "Our opening hours are nine to five, Monday to Friday, and ten to two on Saturdays.",
             "Thank you for calling. How can I help you today?")
    refs = [espeak(text, 16000, voice=voice) for text, voice in zip(texts, ("en-us", "en-gb", "en-us+f1"),
                                                                      strict=True)]
    rows = ["", "Encoder application and complexity at 16 kHz, 32 kbps: cost and PESQ-WB (mean of 3 voices)", "",
            "| application | complexity | µs per frame | PESQ-WB |", "|---|---|---|---|"]
    default_application, default_complexity = opus._APPLICATION_VOIP, opus.COMPLEXITY
    try:
        for application, name in ((2048, "voip (SILK)"), (2049, "audio (CELT)"), (2051, "restricted low delay")):
            for complexity in (5, 3, 1):
                opus._APPLICATION_VOIP, opus.COMPLEXITY = application, complexity
                scores, costs = [], []
                for ref in refs:
                    ref = ref[: len(ref) // 320 * 320]
                    frames = [ref[k : k + 320] for k in range(0, len(ref), 320)]
                    encode, decode = opus._Encoder(16000).encode, ctypes_decoder(16000)
                    started = time.perf_counter()
                    packets = [encode(f) for f in frames]
                    costs.append(1e6 * (time.perf_counter() - started) / len(frames))
                    heard = np.concatenate([decode(p) for p in packets])
                    lag = max(0, int(np.argmax(np.correlate(heard[:16000].astype(float), ref[:16000].astype(float),
                                                            "full"))) - 15999)
                    out = heard[lag:]
                    scores.append(pesq(16000, ref[: len(out)].astype(np.float32) / 32768,
                                       out.astype(np.float32) / 32768, "wb"))
                rows.append(f"| {name} | {complexity} | {statistics.median(costs):.0f} | {np.mean(scores):.2f} |")
    finally:
        opus._APPLICATION_VOIP, opus.COMPLEXITY = default_application, default_complexity
    return rows


def main() -> None:
    frames = {rate: speech(rate) for rate in (48000, 16000)}
    packets = [opus._Encoder(48000).encode(f) for f in frames[48000]]  # a browser's microphone
    cases: dict[str, tuple[Callable[[], Callable], list]] = {
        "encode 48 kHz, PyAV": (lambda: pyav_encoder(48000), frames[48000]),
        "encode 48 kHz, libopus (ctypes)": (lambda: opus._Encoder(48000).encode, frames[48000]),
        "encode 16 kHz, PyAV": (lambda: pyav_encoder(16000), frames[16000]),
        "encode 16 kHz, libopus (ctypes)": (lambda: opus._Encoder(16000).encode, frames[16000]),
        "decode to 48 kHz, PyAV": (pyav_decoder, packets),
        "decode to 48 kHz, libopus (ctypes)": (lambda: ctypes_decoder(48000), packets),
        "decode to 16 kHz, libopus (ctypes)": (lambda: ctypes_decoder(16000), packets),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, (make, inputs) in cases.items():
            times[name].append(per_frame_us(make, inputs))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    lines = [
        "# Opus per 20 ms frame: PyAV against libopus through ctypes",
        "",
        f"`PYTHONPATH=. .venv/bin/python bench/opus_bench.py`, {datetime.date.today()}, {cpu}, "
        f"Python {platform.python_version()}, {len(frames[48000])} frames of the load's speech, median of {ROUNDS} "
        "alternating rounds.",
        "",
        "| step | µs per frame | spread (min-max) |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")
    lines.append("")
    lines.append("PyAV runs the libopus it bundles (1.6); the ctypes rows the system's (Debian's 1.3.1 here).")
    lines += quality_rows()
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
