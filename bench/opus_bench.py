"""Opus per 20 ms frame: PyAV (FFmpeg's libopus wrapper, what the WebRTC path used) against libopus through
ctypes (callbridge.edge.opus), on the load's speech, mono 32 kbps, complexity 5, as the WebRTC path codes it.

Run: PYTHONPATH=. .venv/bin/python bench/opus_bench.py   (writes bench/results/opus.md)

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
    codec = type("Codec", (), {"name": "opus"})()
    frame = type("Frame", (), {})()

    def decode(data: bytes) -> np.ndarray:
        frame.data = data
        voice.put((codec, frame))
        return heard.pop()
    return decode


def per_frame_us(make: Callable[[], Callable], inputs: list) -> float:
    work = make()  # a fresh coder per round, as each call has its own
    started = time.perf_counter()
    for item in inputs:
        work(item)
    return 1e6 * (time.perf_counter() - started) / len(inputs)


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
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
