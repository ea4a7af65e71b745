"""The 20 ms frame every wire format uses, and the framer that cuts audio into fixed-size frames."""

from __future__ import annotations

import numpy as np

#: The audio frame of every wire format here (Twilio media, Opus packets, the outbound pacing): 20 ms.
FRAME_MS = 20


class Rechunker:
    """Turns pushes of any length into frames of exactly `frame_ms` (wire formats and pacing want fixed frames)."""

    def __init__(self, sample_rate: int, frame_ms: int = FRAME_MS) -> None:
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
