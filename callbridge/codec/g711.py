"""G.711 µ-law and A-law <-> 16-bit PCM, the telephone network's 8 kHz wire formats.

The work is done by `audioop` (C, ~0.5 µs per 20 ms frame): the standard library's up to Python 3.12, the
`audioop-lts` backport (same module name) from 3.13. G.711 is stateless, so plain functions suffice.
"""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that audioop leaves the stdlib in 3.13; audioop-lts takes over there.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_SAMPLE_WIDTH = 2  # bytes per PCM16 sample


def _pcm_buffer(pcm: np.ndarray | bytes) -> np.ndarray | bytes:
    """PCM16 in native byte order, as audioop reads it; refuse arrays that would be silently misread."""
    if not isinstance(pcm, np.ndarray):
        return pcm
    if pcm.dtype != np.int16:
        raise TypeError(f"expected int16 PCM, got {pcm.dtype}")
    return pcm if pcm.flags.c_contiguous else pcm.tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    # Over a bytearray, so writable: callers may process decoded audio in place.
    return np.frombuffer(bytearray(pcm), dtype=np.int16)


def ulaw_decode(data: bytes) -> np.ndarray:
    """µ-law bytes -> int16 samples, one per byte."""
    return _samples(audioop.ulaw2lin(data, _SAMPLE_WIDTH))


def ulaw_encode(pcm: np.ndarray | bytes) -> bytes:
    """int16 samples (array or native-order bytes) -> µ-law, one byte per sample."""
    return audioop.lin2ulaw(_pcm_buffer(pcm), _SAMPLE_WIDTH)


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 samples, one per byte."""
    return _samples(audioop.alaw2lin(data, _SAMPLE_WIDTH))


def alaw_encode(pcm: np.ndarray | bytes) -> bytes:
    """int16 samples (array or native-order bytes) -> A-law, one byte per sample."""
    return audioop.lin2alaw(_pcm_buffer(pcm), _SAMPLE_WIDTH)
