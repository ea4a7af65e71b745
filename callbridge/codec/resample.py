"""Streaming polyphase FIR resampling between any two sample rates (8/16/24/48 kHz calls, 22.05/44.1 kHz TTS).

Why not the alternatives: `audioop.ratecv` has no anti-alias filter, `scipy.signal.resample_poly` per chunk
clicks at every chunk edge, and `soxr` streams hold 10-120 ms of audio back. This resampler keeps its input
history between chunks, so any chunking gives the one-shot output, and adds only its filter's group delay
(3.75 ms at 8 kHz) to the call's latency. It needs numpy only: `import scipy.signal` alone takes ~1.5 s.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Filter shape, relative to the lower of the two rates: flat (< 0.001 dB ripple) to 0.4x, >= 94 dB down from
# 0.5x (its Nyquist); at 8 kHz the telephone band's 3.4 kHz edge is 0.5 dB down. A Kaiser-windowed sinc, cut
# off mid-transition: its closed form is cheap to evaluate for any ratio (22050 -> 8000 is a 26435-tap
# prototype at 3.528 MHz), where an equiripple (remez) design needs scipy and seconds. The price is length:
# Kaiser's formula gives 30 samples at the lower rate each side for 94 dB over this 0.1x transition, where
# remez needed 23, so the group delay is 3.75 ms at 8 kHz (1.88 ms at 16 kHz) instead of 2.875 ms.
_STOPBAND_DB = 94.0
_TRANSITION = 0.1  # 0.4x .. 0.5x of the lower rate
_CUTOFF = 0.45
_KAISER_BETA = 0.1102 * (_STOPBAND_DB - 8.7)
_HALF_LENGTH_AT_LOW_RATE = (_STOPBAND_DB - 7.95) / (2.285 * 2 * math.pi * _TRANSITION) / 2

# A block filter's matrix is (block_in + history) x block_out, with block_out a multiple of `up`: 606 x 160 for
# 22050 -> 8000, 500 x 640 for 22050 -> 32000, but millions of entries for nearly equal coprime rates (8001 ->
# 8000). Past 2 MiB the phase filter takes over: it stores only up x (history + 1) taps and makes only the
# needed products, but gathers them per output (60-110 µs per 20 ms chunk where a block filter takes 15-45).
_MAX_BLOCK_MATRIX = 1 << 19
# A product of many short rows is one fast GEMM; a few rows against a big matrix run faster as one GEMV each.
_ROW_BY_ROW_FROM = 1 << 14


def _constant(value: float) -> np.ndarray:
    # 0-d float32 arrays: np.minimum/np.maximum with these cost ~0.5 µs less per chunk than ndarray.clip.
    array = np.array(value, np.float32)
    array.setflags(write=False)
    return array


_INT16_MIN = _constant(-32768.0)
_INT16_MAX = _constant(32767.0)


@dataclass(frozen=True, slots=True)
class _BlockFilter:
    """The filter of one rate ratio, laid out so one matrix product makes a whole run of output blocks.

    Input is cut into blocks of `block_in` samples (a multiple of `down`, so every block has the same phases);
    block s yields `block_out` outputs from the `block_in + history` inputs that end with it. With that span
    as one row, a chunk is a single (blocks x span) @ (span x block_out) product: BLAS does the work, Python
    makes a handful of numpy calls.
    """

    up: int
    down: int
    delay: float  # group delay, in input samples
    history: int  # how many inputs before its newest an output reads
    block_in: int
    block_out: int
    matrix: np.ndarray  # (block_in + history, block_out) float32
    row_by_row: bool

    def start(self, output: int) -> int:
        """The oldest input (absolute index, negative in the initial silence) read to compute `output`."""
        return output // self.block_out * self.block_in - self.history

    def end(self, outputs: int) -> int:
        """One past the newest input read to compute the outputs before `outputs` (zeros past the input)."""
        return -(-outputs // self.block_out) * self.block_in

    def view(self, buffer: np.ndarray) -> np.ndarray:
        """The buffer's rows: overlapping spans, one per block; the buffer must start at a block's span."""
        return sliding_window_view(buffer, self.matrix.shape[0])[:: self.block_in]

    def run(self, rows: np.ndarray, offset: int, first: int, last: int) -> np.ndarray:
        """Outputs first..last-1, from the buffer whose position `offset` holds input `start(first)`."""
        row = offset // self.block_in
        first_block = first // self.block_out
        rows = rows[row : row + -(-last // self.block_out) - first_block]
        if self.row_by_row:
            result = np.matmul(rows[:, None, :], self.matrix).ravel()
        else:
            result = np.dot(rows, self.matrix).ravel()
        done = first_block * self.block_out
        return result[first - done : last - done]


@dataclass(frozen=True, slots=True)
class _PhaseFilter:
    """The filter of a ratio whose block matrix would be huge: per output, its own phase's taps."""

    up: int
    down: int
    delay: float
    history: int
    phases: np.ndarray  # (up, history + 1) float32: row r weighs the inputs of an output at phase r, oldest first

    def start(self, output: int) -> int:
        return output * self.down // self.up - self.history

    def end(self, outputs: int) -> int:
        return (outputs - 1) * self.down // self.up + 1

    def view(self, buffer: np.ndarray) -> np.ndarray:
        return sliding_window_view(buffer, self.history + 1)

    def run(self, windows: np.ndarray, offset: int, first: int, last: int) -> np.ndarray:
        at = np.arange(first, last) * self.down
        newest = at // self.up
        rows = windows[offset + newest - first * self.down // self.up]
        return np.einsum("ij,ij->i", rows, self.phases[at - newest * self.up])


def _ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    common = math.gcd(from_rate, to_rate)
    return to_rate // common, from_rate // common


@functools.cache
def _design(up: int, down: int) -> _BlockFilter | _PhaseFilter:
    """Design the filter once per ratio (all pairs with one ratio share it); numpy only, milliseconds."""
    # The prototype runs at the common rate from_rate * up, which is max(up, down) times the lower rate.
    ratio = max(up, down)
    half_length = math.ceil(_HALF_LENGTH_AT_LOW_RATE * ratio)
    taps = 2 * half_length + 1
    cutoff = 2 * _CUTOFF / ratio  # of the common rate's Nyquist
    ideal = cutoff * np.sinc(cutoff * np.arange(-half_length, half_length + 1))
    prototype = up * ideal * np.kaiser(taps, _KAISER_BETA)  # zero-stuffing by `up` divides the gain by `up`

    # Output k sees input m through prototype[k*down - m*up]: its newest input is floor(k*down/up).
    history = (taps - 1) // up
    delay = half_length / up  # the prototype's centre tap
    # Blocks a third of the history long measured fastest: longer ones multiply more zero taps, shorter ones
    # make more rows. For the call rates that also divides a 20 ms chunk, so no partial block is computed twice.
    block_in = down * max(1, round(history / (3 * down)))
    block_out = block_in * up // down
    span = block_in + history
    if span * block_out <= _MAX_BLOCK_MATRIX:
        rows = np.arange(span)[:, None]
        index = np.arange(block_out)[None, :] * down + (history - rows) * up
        inside = (index >= 0) & (index < taps)
        matrix = np.where(inside, prototype[np.clip(index, 0, taps - 1)], 0.0).astype(np.float32)
        return _BlockFilter(up, down, delay, history, block_in, block_out, matrix, matrix.size >= _ROW_BY_ROW_FROM)
    padded = np.zeros((history + 1) * up)
    padded[:taps] = prototype
    index = np.arange(up)[:, None] + (history - np.arange(history + 1))[None, :] * up
    return _PhaseFilter(up, down, delay, history, padded[index].astype(np.float32))


class Resampler:
    """Streaming polyphase FIR resampler for one direction of one call, between any positive integer rates.

    The filter is designed once per rate ratio (cached) and applied with numpy; the input history is kept
    between chunks, so any chunking gives the same output as one call with everything. After N input samples
    in total it has produced ceil(N * to_rate / from_rate) samples: each output is emitted as soon as the
    newest input it is aligned to has arrived, delayed by `delay_seconds`.

    int16 in gives int16 out (rounded, clipped); float32 in [-1, 1) gives float32 out. One stream, one dtype.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        for rate in (from_rate, to_rate):
            if not isinstance(rate, numbers.Integral) or rate <= 0:
                raise ValueError(f"a sample rate must be a positive integer, got {rate!r}")
        self.from_rate = int(from_rate)
        self.to_rate = int(to_rate)
        self._filter = _design(*_ratio(self.from_rate, self.to_rate)) if from_rate != to_rate else None
        self.delay_seconds = self._filter.delay / self.from_rate if self._filter else 0.0
        self.reset()

    def reset(self) -> None:
        """Forget all input, as if newly constructed (e.g. between two unrelated utterances)."""
        self._dtype: np.dtype | None = None
        self._inputs = 0
        self._outputs = 0
        if self._filter is not None:
            # The buffer holds the input from self._filter.start(self._outputs) on, at self._start; it begins
            # with the silence before the first sample. Room for many chunks: the held input moves to the
            # front only rarely.
            self._start = 0
            self._allocate(np.zeros(max(4096, 64 * self._filter.history), np.float32))

    def _allocate(self, buffer: np.ndarray) -> None:
        """Adopt a working buffer, with the filter's view of it (made once: it costs microseconds)."""
        self._buffer = buffer
        self._view = self._filter.view(buffer)

    def _make_room(self, held: int, size: int) -> None:
        """Move the held input to the front of the buffer, into a bigger one if `size` would not fit."""
        kept = self._buffer[self._start : self._start + held]
        if size > self._buffer.shape[0]:
            self._allocate(np.zeros(2 * size, np.float32))
        self._buffer[:held] = kept
        self._start = 0

    def _check(self, samples: np.ndarray) -> None:
        if samples.ndim != 1 or samples.dtype not in (np.int16, np.float32):
            raise TypeError(f"expected 1-D int16 or float32 samples, got {samples.dtype} with shape {samples.shape}")
        if self._dtype is None:
            self._dtype = samples.dtype
        elif samples.dtype != self._dtype:
            raise TypeError(f"this stream carries {self._dtype}; got {samples.dtype} (reset() to switch)")

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk of the stream (any length, 0 included)."""
        if samples.dtype is not self._dtype or samples.ndim != 1:
            self._check(samples)
        f = self._filter
        if f is None:
            return samples.copy()

        first = f.start(self._outputs)  # the input at self._buffer[self._start]
        held = self._inputs - first
        inputs = self._inputs + samples.shape[0]
        outputs = -(-inputs * f.up // f.down)
        end = inputs - first
        span = f.end(outputs) - first  # the input all due outputs read
        if self._start + max(span, end) > self._buffer.shape[0]:
            self._make_room(held, max(span, end))
        start = self._start
        buffer = self._buffer
        buffer[start + held : start + end] = samples
        self._inputs = inputs
        if outputs == self._outputs:
            return np.empty(0, samples.dtype)

        if span > end:
            # A partial last block is computed now for its outputs already due (inputs yet to come meet
            # zero taps there) and again, complete, on a later call. Zeroing its missing inputs keeps a
            # stale non-finite float sample from turning those zero products into NaN.
            buffer[start + end : start + span] = 0.0
        out = f.run(self._view, start, self._outputs, outputs)
        self._start = start + f.start(outputs) - first
        self._outputs = outputs

        if self._dtype == np.float32:
            return out
        np.rint(out, out=out)
        np.minimum(out, _INT16_MAX, out=out)
        np.maximum(out, _INT16_MIN, out=out)
        return out.astype(np.int16)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole signal with the streaming filter (same delay, same output as any chunking)."""
    return Resampler(from_rate, to_rate).process(samples)
