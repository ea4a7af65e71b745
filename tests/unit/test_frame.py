"""Rechunker cuts any pushes into exact frames without losing or repeating a sample."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.codec import FRAME_MS, Rechunker


@pytest.mark.parametrize(("rate", "frame_ms", "expected"), [(8000, 20, 160), (16000, 32, 512), (48000, 10, 480)])
def test_frame_samples(rate: int, frame_ms: int, expected: int) -> None:
    assert Rechunker(rate, frame_ms).frame_samples == expected


def test_frames_are_20_ms_unless_asked() -> None:
    assert Rechunker(8000).frame_samples == 8000 * FRAME_MS // 1000 == 160


def test_frame_length_must_be_whole_samples() -> None:
    with pytest.raises(ValueError):
        Rechunker(8000, 0)
    with pytest.raises(ValueError):
        Rechunker(22050, 1)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([8000, 16000, 48000]),
    frame_ms=st.sampled_from([10, 20, 32]),
    sizes=st.lists(st.one_of(st.sampled_from([0, 1]), st.integers(0, 2000)), max_size=25),
)
def test_no_sample_lost_duplicated_or_reordered(rate: int, frame_ms: int, sizes: list[int]) -> None:
    chunker = Rechunker(rate, frame_ms)
    size = chunker.frame_samples
    total = sum(sizes)
    signal = (np.arange(total) % 65536 - 32768).astype(np.int16)  # every sample distinct within 65,536
    frames: list[np.ndarray] = []
    start = 0
    for n in sizes:
        chunk = signal[start : start + n].copy()
        new = chunker.push(chunk)
        chunk[:] = 0  # the caller reuses its buffer: frames must not see that
        frames += new
        start += n
        assert chunker.pending == start % size
        assert len(frames) == start // size
    assert all(f.dtype == np.int16 and f.shape == (size,) for f in frames)
    tail = chunker.flush()
    assert chunker.pending == 0
    if total % size:
        assert tail is not None
        assert tail.shape == (size,)
        frames.append(tail)
    else:
        assert tail is None
    out = np.concatenate([np.zeros(0, np.int16), *frames])
    assert np.array_equal(out[:total], signal)
    assert not out[total:].any()  # flush pads with zeros


def test_flush_when_empty_and_reset_drops_the_partial_frame() -> None:
    chunker = Rechunker(8000)
    assert chunker.flush() is None
    assert chunker.push(np.ones(100, np.int16)) == []
    chunker.reset()
    assert chunker.pending == 0
    assert chunker.flush() is None
    frames = chunker.push(np.full(160, 7, np.int16))
    assert len(frames) == 1
    assert (frames[0] == 7).all()


def test_push_refuses_other_dtypes() -> None:
    with pytest.raises(TypeError):
        Rechunker(8000).push(np.zeros(160, np.float32))
