"""Silero VAD on 32 ms windows: one shared model per process, state per call.

The model files ship inside the silero-vad wheel; they are located with `importlib.util.find_spec`
so that the package `__init__` (which imports torch) is not run for the default onnxruntime backend.
Both backends take a batch of windows with one state per row, so per-call state is never shared and
calls can be batched into one inference later without changing callers.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

WINDOW_SAMPLES = {8000: 256, 16000: 512}
CONTEXT_SAMPLES = {8000: 32, 16000: 64}
WINDOW_SECONDS = 0.032


def model_file(name: str) -> Path:
    """Path of a model file inside the installed silero-vad wheel (nothing is downloaded)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise RuntimeError(f"silero-vad model file missing: {path}")
    return path


@dataclass
class VadState:
    """The recurrent state and audio context of one call's VAD stream."""

    sample_rate: int
    state: np.ndarray = field(init=False)
    context: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"VAD runs at 8000 or 16000 Hz, not {self.sample_rate}")
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES[self.sample_rate], dtype=np.float32)


class VadModel(Protocol):
    """A speech-probability model: one row of `windows` (float32, [-1, 1)) per state, all at one rate."""

    def infer(self, windows: np.ndarray, states: list[VadState]) -> np.ndarray: ...


def _stack(windows: np.ndarray, states: list[VadState]) -> tuple[np.ndarray, np.ndarray, int]:
    rate = states[0].sample_rate
    if any(s.sample_rate != rate for s in states):
        raise ValueError("a VAD batch must share one sample rate")
    if windows.shape != (len(states), WINDOW_SAMPLES[rate]):
        raise ValueError(f"expected windows of shape ({len(states)}, {WINDOW_SAMPLES[rate]}), got {windows.shape}")
    contexts = np.stack([s.context for s in states])
    x = np.concatenate([contexts, windows.astype(np.float32, copy=False)], axis=1)
    state = np.concatenate([s.state for s in states], axis=1)
    return x, state, rate


def _unstack(x: np.ndarray, new_state: np.ndarray, states: list[VadState]) -> None:
    width = x.shape[1]
    for i, s in enumerate(states):
        s.state = np.ascontiguousarray(new_state[:, i : i + 1, :])
        s.context = x[i, width - len(s.context) :].copy()


class OnnxVad:
    """silero_vad.onnx on onnxruntime, one intra-op thread (calls are the parallelism)."""

    def __init__(self) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(model_file("silero_vad.onnx")), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._rates = {rate: np.array(rate, dtype=np.int64) for rate in WINDOW_SAMPLES}

    def infer(self, windows: np.ndarray, states: list[VadState]) -> np.ndarray:
        x, state, rate = _stack(windows, states)
        out, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._rates[rate]})
        _unstack(x, new_state, states)
        return out[:, 0].astype(np.float32)


class TorchVad:
    """silero_vad.jit on torch; the JIT wrapper's own state is bypassed so each call keeps its own."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self._torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: the wheel ships a JIT file
            model = torch.jit.load(str(model_file("silero_vad.jit")), map_location="cpu")
        model.eval()
        self._models = {16000: model._model, 8000: model._model_8k}

    def infer(self, windows: np.ndarray, states: list[VadState]) -> np.ndarray:
        x, state, rate = _stack(windows, states)
        torch = self._torch
        with torch.inference_mode():
            out, new_state = self._models[rate](torch.from_numpy(x), torch.from_numpy(state))
        _unstack(x, new_state.numpy(), states)
        return out.numpy()[:, 0].astype(np.float32)


def load_vad(backend: Literal["onnx", "torch"] = "onnx") -> VadModel:
    """Load the process's one VAD model."""
    if backend == "onnx":
        return OnnxVad()
    if backend == "torch":
        return TorchVad()
    raise ValueError(f"unknown VAD backend {backend!r}")


class VadStream:
    """One call's VAD: feeds exact 32 ms int16 windows to the shared model with this call's state."""

    def __init__(self, model: VadModel, sample_rate: int) -> None:
        self.model = model
        self.state = VadState(sample_rate)
        self.window_samples = WINDOW_SAMPLES[sample_rate]

    def probability(self, window: np.ndarray) -> float:
        if len(window) != self.window_samples:
            raise ValueError(f"VAD window must be {self.window_samples} samples, got {len(window)}")
        x = (window.astype(np.float32) * (1.0 / 32768.0))[None, :]
        return float(self.model.infer(x, [self.state])[0])

    def reset(self) -> None:
        self.state.reset()
