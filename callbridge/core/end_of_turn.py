"""Smart Turn v3.2: has the caller finished their turn, judged from how the last 8 s of it sound?

A silence rule cannot tell a finished sentence from a pause at a comma or an "um"; Smart Turn hears the
intonation and the words' shape. The model (BSD-2, 8.7 MB) ships inside the pipecat-ai wheel; it is
located with `importlib.util.find_spec` without running pipecat's `__init__` (which needs its whole
dependency tree), as core/vad.py does for silero-vad. `EndOfTurnModel` is audio in, probability out;
`EndOfTurnAsker` runs it for every call of the process on one thread of its own, off the event loop.

The model takes Whisper's log-mel features of exactly 8 s of 16 kHz audio: a turn is cut to its last 8 s
or padded with silence at the start. Phone audio is upsampled with callbridge's own resampler, aligned to
the original (Pipecat's resampling of 8 kHz audio broke its model silently: pipecat#3844). The features are
computed here, in numpy: faster-whisper's extractor gives the same numbers, but importing it loads PyAV
and CTranslate2, which the call core must not (tests/unit/test_layers.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from callbridge.codec import Resampler

MODEL_RATE = 16000
MODEL_SECONDS = 8
MODEL_SAMPLES = MODEL_RATE * MODEL_SECONDS
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"

# Whisper's features (transformers' WhisperFeatureExtractor with chunk_length=8, as Smart Turn was trained):
# 25 ms Hann windows every 10 ms, power spectrum onto 80 Slaney mel bands, log10 clamped to 8 decades below
# the loudest band, scaled to about [-1, 1].
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = MODEL_SAMPLES // HOP  # 800
_MEL_FLOOR = 1e-10
_VARIANCE_EPSILON = 1e-7


def model_file() -> Path:
    """Path of Smart Turn's ONNX file inside the installed pipecat-ai wheel (nothing is downloaded)."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pipecat-ai package (which carries the end-of-turn model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "audio" / "turn" / "smart_turn" / "data" / MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"end-of-turn model file missing: {path}")
    return path


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear to 1 kHz, logarithmic above (as librosa and Whisper use)."""
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, 15.0 + 27.0 * np.log(np.maximum(hz, 1e-9) / 1000.0) / np.log(6.4))


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


def _mel_filters() -> np.ndarray:
    """(N_FFT // 2 + 1, N_MELS) float32: triangles between Slaney mel points, each of unit area."""
    edges = _slaney_hz(np.linspace(0.0, _slaney_mel(np.array(MODEL_RATE / 2)), N_MELS + 2))
    bins = np.linspace(0.0, MODEL_RATE / 2, N_FFT // 2 + 1)
    rising = (bins[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    falling = (edges[None, 2:] - bins[:, None]) / np.diff(edges)[None, 1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (edges[2:] - edges[:-2]))[None, :]).astype(np.float32)


_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as torch.hann_window
_FILTERS = _mel_filters()

# No BLAS on the model's thread: an OpenBLAS product big enough to be split across threads leaves its worker
# threads spinning on the other core for tens of ms after every question (measured: 116 ms of process CPU per
# question where the model's thread used 58; bench/results/end_of_turn.md). So the mel bands are summed from
# their few non-zero weights (391 of 201 x 80), and phone audio is resampled in pieces too small to be split.
_BAND_BINS, _BAND_OF = np.nonzero(_FILTERS.T)[1], np.nonzero(_FILTERS.T)[0]
_BAND_WEIGHTS = _FILTERS[_BAND_BINS, _BAND_OF]
_BAND_STARTS = np.searchsorted(_BAND_OF, np.arange(N_MELS))
_RESAMPLE_PIECE = 2048  # input samples per Resampler.process call


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """(MODEL_SAMPLES,) float32 16 kHz audio -> (N_MELS, FRAMES) float32 Whisper features.

    The audio is first normalised to zero mean and unit variance, as Smart Turn's feature extractor does."""
    if audio.shape != (MODEL_SAMPLES,):
        raise ValueError(f"expected {MODEL_SAMPLES} samples, got {audio.shape}")
    x = audio.astype(np.float32)
    x -= x.mean()
    x /= np.sqrt(x.var() + np.float32(_VARIANCE_EPSILON))
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP][:FRAMES]  # the last frame is dropped, as Whisper does
    spectrum = np.fft.rfft(frames * _WINDOW, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = np.add.reduceat(power[:, _BAND_BINS] * _BAND_WEIGHTS, _BAND_STARTS, axis=1)  # power @ _FILTERS
    log_mel = np.log10(np.maximum(mel, np.float32(_MEL_FLOOR)))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).T.astype(np.float32)


def model_input(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A turn's float32 audio at `sample_rate` -> its last 8 s at 16 kHz, silence-padded at the start.

    The resampler's output lags its input by its filter's delay: the input gets that much silence at the
    end and the output loses it at the start, so the turn ends at the same instant at both rates."""
    if audio.ndim != 1 or audio.dtype != np.float32:
        raise TypeError(f"expected 1-D float32 audio, got {audio.dtype} with shape {audio.shape}")
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)  # bad samples give a probability, never NaN
    if sample_rate != MODEL_RATE:
        resampler = Resampler(sample_rate, MODEL_RATE)
        lag = round(resampler.delay_seconds * MODEL_RATE)
        needed = -(-MODEL_SAMPLES * sample_rate // MODEL_RATE)
        tail = audio[-needed:] if len(audio) > needed else audio  # only the last 8 s are heard
        flush = np.zeros(-(-lag * sample_rate // MODEL_RATE), np.float32)
        padded = np.concatenate([tail, flush])
        upsampled = np.concatenate([resampler.process(padded[i : i + _RESAMPLE_PIECE])
                                    for i in range(0, len(padded), _RESAMPLE_PIECE)])
        audio = upsampled[lag : lag + -(-len(tail) * MODEL_RATE // sample_rate)]
    out = np.zeros(MODEL_SAMPLES, np.float32)
    kept = audio[-MODEL_SAMPLES:]
    out[MODEL_SAMPLES - len(kept) :] = kept
    return out


class EndOfTurnModel:
    """The process's one Smart Turn session, which every call asks in turn."""

    def __init__(self) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # calls are the parallelism, as for the VAD
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(
            str(model_file()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probability(self, audio: np.ndarray, sample_rate: int) -> float:
        """How likely the turn whose audio (float32 in [-1, 1]) ends now is complete, 0..1.

        One call at a time: a batch of calls costs more CPU per call than one by one, not less
        (bench/results/end_of_turn.md)."""
        features = log_mel_features(model_input(audio, sample_rate))[None]
        (scores,) = self._session.run(None, {"input_features": features})
        return float(scores[0, 0])


class EndOfTurnAsker:
    """The process's one model and the one thread it runs on: every call's questions queue there.

    ~49 ms of CPU per question would stall every call's audio if it ran on the event loop; onnxruntime
    releases the GIL while it computes, so on its own thread the loop goes on meanwhile. One thread, not
    more: each question already costs a whole core for its duration (bench/results/end_of_turn.md), and the
    VAD needs the other one. A question cancelled before its turn in the queue (its caller spoke again, the
    call ended) is never computed."""

    def __init__(self, model: EndOfTurnModel, on_inference: Callable[[float, float], None] | None = None) -> None:
        self.model = model
        self.on_inference = on_inference  # (wall seconds, CPU seconds) of each inference, for metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="end-of-turn")

    async def probability(self, audio: np.ndarray, sample_rate: int) -> float:
        """The model's answer for a turn's float32 audio, computed on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, audio, sample_rate)

    def _infer(self, audio: np.ndarray, sample_rate: int) -> float:
        wall, cpu = time.perf_counter(), time.thread_time()
        probability = self.model.probability(audio, sample_rate)
        if self.on_inference is not None:
            self.on_inference(time.perf_counter() - wall, time.thread_time() - cpu)
        return probability

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
