"""The streaming resampler, at call rates and TTS rates: chunking never changes the output, tones stay clean,
nothing aliases, delay < 4 ms, and no scipy at run time."""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.codec import Resampler, resample
from callbridge.codec.resample import _design, _PhaseFilter, _ratio

CALL_RATES = (8000, 16000, 24000, 48000)
PAIRS = list(itertools.permutations(CALL_RATES, 2))
# What TTS engines produce (espeak-ng and Piper 22.05 kHz, others 44.1, 11.025, 32 kHz) into call rates, and back.
TTS_PAIRS = [
    (22050, 8000),
    (22050, 16000),
    (22050, 48000),
    (44100, 16000),
    (44100, 8000),
    (11025, 8000),
    (32000, 8000),
    (44100, 48000),
    (8000, 22050),
]
# Ratios whose block matrix would be huge: the phase filter.
PHASE_PAIRS = [(11025, 32000), (8001, 8000)]
SAME_RATE = [(8000, 8000), (48000, 48000)]
AMPLITUDE = 16384  # -6 dBFS
CHUNK_MS = 20


def tone(freq: float, rate: int, seconds: float, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def stream(resampler: Resampler, samples: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([resampler.process(samples[i : i + chunk]) for i in range(0, len(samples), chunk)])


def steady(from_rate: int, to_rate: int, freq: float, as_float: bool = False) -> np.ndarray:
    """A 0.25 s tone streamed in 20 ms chunks, without the first 10 ms (delay plus the filter filling up).

    as_float streams it as float32, never rounded to int16 (out in int16 units): what the filter does, not the
    ~92 dB floor of int16 rounding (which at 11.025 kHz and up would hide the stopband).
    """
    signal = tone(freq, from_rate, 0.25)
    if as_float:
        t = np.arange(len(signal)) / from_rate
        signal = (AMPLITUDE / 32768 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    out = stream(Resampler(from_rate, to_rate), signal, from_rate * CHUNK_MS // 1000)
    return out[to_rate // 100 :].astype(np.float64) * (32768 if as_float else 1)


def fit_tones(samples: np.ndarray, rate: int, freqs: list[float]) -> tuple[list[float], float]:
    """Least-squares sines fitted together at `freqs`: (amplitudes, residual power = noise plus distortion).

    Together, so that over a span of no whole number of periods (22.05 kHz) one tone's leakage is not read
    as another's amplitude.
    """
    t = np.arange(len(samples)) / rate
    waves = [f(2 * np.pi * freq * t) for freq in freqs for f in (np.cos, np.sin)]
    basis = np.column_stack([*waves, np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis, samples, rcond=None)
    residual = samples - basis @ coef
    return [float(np.hypot(*coef[i : i + 2])) for i in range(0, 2 * len(freqs), 2)], float(np.mean(residual**2))


def fit_tone(samples: np.ndarray, rate: int, freq: float) -> tuple[float, float]:
    (amplitude,), residual = fit_tones(samples, rate, [freq])
    return amplitude, residual


@functools.cache
def noisy_signal(rate: int) -> np.ndarray:
    """Loud noise with full-scale bursts, so rounding and clipping are exercised at chunk edges too."""
    rng = np.random.default_rng(rate)
    noise = rng.normal(0, 8000, rate // 20)
    noise[rate // 100 : rate // 100 + 40] = 32767
    noise[rate // 50 : rate // 50 + 40] = -32768
    return np.clip(noise, -32768, 32767).astype(np.int16)


chunk_sizes = st.lists(st.one_of(st.sampled_from([0, 1]), st.integers(0, 500)), max_size=30)


@pytest.mark.parametrize(("from_rate", "to_rate"), PAIRS + TTS_PAIRS + PHASE_PAIRS + SAME_RATE)
@settings(max_examples=12, deadline=None)
@given(sizes=chunk_sizes)
def test_any_chunking_gives_the_one_shot_output(from_rate: int, to_rate: int, sizes: list[int]) -> None:
    signal = noisy_signal(from_rate)
    whole = resample(signal, from_rate, to_rate)
    resampler = Resampler(from_rate, to_rate)
    edges = np.cumsum([0, *sizes, len(signal)]).clip(0, len(signal))
    parts = [resampler.process(signal[a:b]) for a, b in itertools.pairwise(edges)]
    assert all(p.dtype == np.int16 for p in parts)
    chunked = np.concatenate(parts)
    assert len(chunked) == len(whole)
    assert np.abs(chunked.astype(np.int32) - whole).max() <= 2


@pytest.mark.parametrize(
    ("from_rate", "to_rate"), [(8000, 48000), (48000, 8000), (16000, 24000), (22050, 8000), (11025, 32000)]
)
def test_long_stream_with_odd_and_huge_chunks_gives_the_one_shot_output(from_rate: int, to_rate: int) -> None:
    """Seconds of audio: the held input is moved to the buffer's front many times, and a huge chunk grows it."""
    rng = np.random.default_rng(7)
    signal = np.clip(rng.normal(0, 8000, 3 * from_rate), -32768, 32767).astype(np.int16)
    sizes = [1, 159, 160, 3, from_rate // 50, 7, 2 * from_rate, 480] * 4
    resampler = Resampler(from_rate, to_rate)
    edges = np.cumsum([0, *sizes, len(signal)]).clip(0, len(signal))
    chunked = np.concatenate([resampler.process(signal[a:b]) for a, b in itertools.pairwise(edges)])
    whole = resample(signal, from_rate, to_rate)
    assert len(chunked) == len(whole) == -(-len(signal) * to_rate // from_rate)
    assert np.abs(chunked.astype(np.int32) - whole).max() <= 2


@pytest.mark.parametrize(("from_rate", "to_rate"), PAIRS + TTS_PAIRS + PHASE_PAIRS + SAME_RATE)
def test_output_count_depends_only_on_input_count(from_rate: int, to_rate: int) -> None:
    resampler = Resampler(from_rate, to_rate)
    total_in = total_out = 0
    for size in [1, 0, 7, 160, 3, 481, 2, 960, 5]:
        total_out += len(resampler.process(np.zeros(size, np.int16)))
        total_in += size
        assert total_out == -(-total_in * to_rate // from_rate)


@pytest.mark.parametrize(("from_rate", "to_rate"), PAIRS + TTS_PAIRS + PHASE_PAIRS)
def test_float32_stream_matches_int16_stream(from_rate: int, to_rate: int) -> None:
    signal = tone(1000, from_rate, 0.05)
    as_float = (signal / 32768).astype(np.float32)
    out_float = stream(Resampler(from_rate, to_rate), as_float, 77)
    assert out_float.dtype == np.float32
    np.testing.assert_allclose(out_float, resample(as_float, from_rate, to_rate), atol=1e-6)
    np.testing.assert_allclose(out_float * 32768, resample(signal, from_rate, to_rate), atol=1.0)


@pytest.mark.parametrize(("from_rate", "to_rate"), PAIRS + TTS_PAIRS + PHASE_PAIRS)
def test_tone_sinad_above_80_db_and_gain_flat(from_rate: int, to_rate: int) -> None:
    out = steady(from_rate, to_rate, 1000)
    amplitude, noise = fit_tone(out, to_rate, 1000)
    sinad = 10 * np.log10(amplitude**2 / 2 / noise)
    assert sinad >= 80, f"SINAD {sinad:.1f} dB"
    assert abs(20 * np.log10(amplitude / AMPLITUDE)) < 0.02


# (from, to, a tone above the target's Nyquist, well inside the stopband)
STOPBAND_TONES = [
    (16000, 8000, 5000),
    (24000, 8000, 5000),
    (48000, 8000, 5000),
    (48000, 16000, 10000),
    (24000, 16000, 10000),
    (48000, 24000, 14000),
]


@pytest.mark.parametrize(("from_rate", "to_rate", "freq"), STOPBAND_TONES)
def test_stopband_tone_does_not_alias(from_rate: int, to_rate: int, freq: int) -> None:
    # In float32: in int16 the alias rounds to exact silence, which would prove nothing about the filter.
    passed = np.sqrt(np.mean(steady(from_rate, to_rate, 1000, as_float=True) ** 2))
    aliased = np.sqrt(np.mean(steady(from_rate, to_rate, freq, as_float=True) ** 2))
    assert 20 * np.log10(passed / aliased) >= 60


@pytest.mark.parametrize(("from_rate", "to_rate"), [p for p in PAIRS + TTS_PAIRS + PHASE_PAIRS if p[0] < p[1]])
def test_upsampling_leaves_no_image(from_rate: int, to_rate: int) -> None:
    """The mirror image of a 1 kHz tone at from_rate - 1 kHz is what a missing anti-image filter leaves."""
    (wanted, image), _ = fit_tones(steady(from_rate, to_rate, 1000, as_float=True), to_rate, [1000, from_rate - 1000])
    assert 20 * np.log10(wanted / image) >= 80


def measured_delay(from_rate: int, to_rate: int) -> float:
    """Seconds between a chirp going in and coming out, from the peak of their cross-correlation."""
    seconds, low, high = 0.1, 200.0, 0.35 * min(from_rate, to_rate)

    def chirp(rate: int) -> np.ndarray:
        t = np.arange(int(rate * seconds)) / rate
        phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds))
        return AMPLITUDE * np.hanning(len(t)) * np.sin(phase)

    out = resample(np.rint(chirp(from_rate)).astype(np.int16), from_rate, to_rate).astype(np.float64)
    xcorr = np.correlate(np.concatenate([out, np.zeros(to_rate // 100)]), chirp(to_rate), "full")
    peak = int(np.argmax(xcorr))
    before, at, after = xcorr[peak - 1 : peak + 2]
    offset = 0.5 * (before - after) / (before - 2 * at + after)  # parabolic peak interpolation
    return (peak + offset - (int(to_rate * seconds) - 1)) / to_rate


@pytest.mark.parametrize(("from_rate", "to_rate"), PAIRS + TTS_PAIRS + PHASE_PAIRS + SAME_RATE)
def test_group_delay_under_4_ms_as_declared(from_rate: int, to_rate: int) -> None:
    """3.75 ms at 8 kHz, 1.9 at 16 kHz: the Kaiser filter's 30 samples each side at the lower rate."""
    resampler = Resampler(from_rate, to_rate)
    assert resampler.delay_seconds <= 0.00375
    assert measured_delay(from_rate, to_rate) == pytest.approx(resampler.delay_seconds, abs=20e-6)


def test_reset_starts_a_fresh_stream() -> None:
    resampler = Resampler(8000, 16000)
    signal = noisy_signal(8000)
    first = resampler.process(signal)
    resampler.process(signal[:123])
    resampler.reset()
    assert np.array_equal(resampler.process(signal), first)


def test_same_rate_passes_through_a_copy() -> None:
    signal = noisy_signal(16000)
    out = Resampler(16000, 16000).process(signal)
    assert np.array_equal(out, signal)
    assert not np.shares_memory(out, signal)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(0, 8000), (8000, -16000), (22050.0, 8000), (8000, "16000")])
def test_rates_other_than_positive_integers_are_refused(from_rate: int, to_rate: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        Resampler(from_rate, to_rate)


def test_other_dtypes_and_switching_dtype_are_refused() -> None:
    resampler = Resampler(8000, 16000)
    with pytest.raises(TypeError):
        resampler.process(np.zeros(160, np.float64))
    with pytest.raises(TypeError):
        resampler.process(np.zeros((2, 160), np.int16))
    resampler.process(np.zeros(160, np.int16))
    with pytest.raises(TypeError, match="reset"):
        resampler.process(np.zeros(160, np.float32))


# TTS rates into call rates: (from, to, tones above the lower rate's Nyquist, from its edge on)
TTS_STOPBAND_TONES = [
    (22050, 8000, [4000, 4300, 6000, 10000]),
    (22050, 16000, [8000, 8800, 10500]),
    (44100, 16000, [8000, 9000, 15000, 21000]),
    (44100, 8000, [4000, 5000, 12000]),
    (11025, 8000, [4000, 4500, 5500]),
    (32000, 8000, [4000, 7000, 15000]),
    (8001, 8000, [4000, 4001]),
]


@pytest.mark.parametrize(("from_rate", "to_rate", "freqs"), TTS_STOPBAND_TONES)
def test_tts_stopband_tones_are_90_db_down(from_rate: int, to_rate: int, freqs: list[int]) -> None:
    """>= 90 dB from the lower rate's Nyquist on (the filter is designed for 94), in float32 as above."""
    passed = np.sqrt(np.mean(steady(from_rate, to_rate, 1000, as_float=True) ** 2))
    for freq in freqs:
        aliased = np.sqrt(np.mean(steady(from_rate, to_rate, freq, as_float=True) ** 2))
        assert 20 * np.log10(passed / aliased) >= 90, f"{freq} Hz"


@pytest.mark.parametrize(("from_rate", "to_rate"), TTS_PAIRS + PHASE_PAIRS + [(8000, 16000), (16000, 8000)])
def test_passband_is_flat_to_0_4_of_the_lower_rate(from_rate: int, to_rate: int) -> None:
    low = min(from_rate, to_rate)
    for freq in (100, 0.1 * low, 0.25 * low, 0.4 * low):
        amplitude, _ = fit_tone(steady(from_rate, to_rate, freq, as_float=True), to_rate, freq)
        assert abs(20 * np.log10(amplitude / AMPLITUDE)) < 0.05, f"{freq} Hz"


@pytest.mark.parametrize(("from_rate", "to_rate"), [p for p in TTS_PAIRS + PHASE_PAIRS if p[0] < p[1]])
def test_upsampled_passband_edge_tone_has_all_images_90_db_down(from_rate: int, to_rate: int) -> None:
    """Everything but the tone (its images at k * from_rate +- f, float32 rounding) against the tone."""
    freq = 0.4 * from_rate
    amplitude, residual = fit_tone(steady(from_rate, to_rate, freq, as_float=True), to_rate, freq)
    assert 10 * np.log10(amplitude**2 / 2 / residual) >= 90


@pytest.mark.parametrize(("from_rate", "to_rate"), TTS_PAIRS + PHASE_PAIRS)
def test_tts_rates_one_shot_length_and_chunked_output(from_rate: int, to_rate: int) -> None:
    """A whole TTS reply at once, and streamed as the engine hands it out (odd sizes): the same samples."""
    signal = noisy_signal(from_rate)
    whole = resample(signal, from_rate, to_rate)
    assert len(whole) == -(-len(signal) * to_rate // from_rate)
    chunked = stream(Resampler(from_rate, to_rate), signal, 1023)
    assert np.abs(chunked.astype(np.int32) - whole).max() <= 2
    as_float = (signal / 32768).astype(np.float32)
    np.testing.assert_allclose(
        stream(Resampler(from_rate, to_rate), as_float, 517), resample(as_float, from_rate, to_rate), atol=1e-6
    )


def test_ratios_too_big_for_a_block_matrix_get_the_phase_filter() -> None:
    for from_rate, to_rate in PHASE_PAIRS:
        assert isinstance(_design(*_ratio(from_rate, to_rate)), _PhaseFilter)
    assert not any(isinstance(_design(*_ratio(*pair)), _PhaseFilter) for pair in PAIRS + TTS_PAIRS)


def test_filters_are_designed_once_per_ratio_in_milliseconds() -> None:
    assert Resampler(22050, 8000)._filter is Resampler(44100, 16000)._filter  # one ratio, 160/441
    start = time.perf_counter()
    _design.__wrapped__(160, 441)  # uncached: a 26435-tap prototype
    assert time.perf_counter() - start < 0.25  # ~5-10 ms; the margin is for a loaded test machine


def test_running_a_resampler_never_imports_scipy() -> None:
    code = (
        "import sys, numpy as np\n"
        "from callbridge.codec import Resampler\n"
        "for pair in [(8000, 16000), (22050, 8000), (11025, 32000)]:\n"
        "    Resampler(*pair).process(np.zeros(441, np.int16))\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if m.startswith('scipy'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
