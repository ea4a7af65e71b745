"""The audio unit passed between transports, the call runtime and bots, and the fixed-size framer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class PCMFrame:
    """Mono int16 audio that carries its sample rate, so no stage has to guess it.

    Compared by identity (eq=False): element-wise array equality has no single truth value.
    """

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 1 or self.samples.dtype != np.int16:
            raise TypeError(f"expected 1-D int16 samples, got {self.samples.dtype} {self.samples.shape}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.samples.shape[0] / self.sample_rate

    @classmethod
    def silence(cls, sample_rate: int, duration_ms: int) -> PCMFrame:
        """Digital silence, e.g. to keep a transport's clock running while the bot thinks."""
        return cls(np.zeros(sample_rate * duration_ms // 1000, np.int16), sample_rate)


class Rechunker:
    """Turns pushes of any length into frames of exactly `frame_ms` (wire formats and pacing want fixed frames)."""

    def __init__(self, sample_rate: int, frame_ms: int = 20) -> None:
        samples = sample_rate * frame_ms
        if samples <= 0 or samples % 1000:
            raise ValueError(f"{frame_ms} ms is not a positive whole number of samples at {sample_rate} Hz")
        self.frame_samples = samples // 1000
        self._partial = np.zeros(self.frame_samples, np.int16)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples buffered towards the next frame."""
        return self._fill

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Buffer `samples`; return every frame now complete, oldest first, as int16 copies."""
        if samples.ndim != 1 or samples.dtype != np.int16:
            raise TypeError(f"expected 1-D int16 samples, got {samples.dtype} {samples.shape}")
        size = self.frame_samples
        frames: list[np.ndarray] = []
        taken = 0
        if self._fill:
            taken = min(size - self._fill, samples.shape[0])
            self._partial[self._fill : self._fill + taken] = samples[:taken]
            self._fill += taken
            if self._fill < size:
                return frames
            frames.append(self._partial.copy())
            self._fill = 0
        whole = (samples.shape[0] - taken) // size
        if whole:
            frames.extend(samples[taken : taken + whole * size].reshape(whole, size).copy())
        rest = samples[taken + whole * size :]
        self._partial[: rest.shape[0]] = rest
        self._fill = rest.shape[0]
        return frames

    def flush(self) -> np.ndarray | None:
        """The buffered partial frame padded with zeros to full length, or None if nothing is buffered."""
        if not self._fill:
            return None
        frame = self._partial.copy()
        frame[self._fill :] = 0
        self._fill = 0
        return frame

    def reset(self) -> None:
        """Drop the buffered partial frame (e.g. on barge-in)."""
        self._fill = 0
