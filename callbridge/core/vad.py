"""Silero VAD on 32 ms windows: one shared model per process, state per call.

The model files ship inside the silero-vad wheel; they are located with `importlib.util.find_spec`
so that the package `__init__` (which imports torch) is not run for the default onnxruntime backend.
Both backends take a batch of windows with one state per row, so per-call state is never shared while
one inference serves every call (VadBatcher).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

logger = logging.getLogger("callbridge.vad")

WINDOW_SAMPLES = {8000: 256, 16000: 512}
CONTEXT_SAMPLES = {8000: 32, 16000: 64}
VAD_WINDOW_MS = 32


def model_file(name: str) -> Path:
    """Path of a model file inside the installed silero-vad wheel (nothing is downloaded)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise RuntimeError(f"silero-vad model file missing: {path}")
    return path


class VadModel(Protocol):
    """A speech-probability model over a batch of windows, one row of recurrent state per window."""

    def infer_rows(self, x: np.ndarray, state: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
        """`x` (batch, context + window) float32, `state` (2, batch, 128) -> (probabilities (batch,), new
        state). Touches no Python objects but its arguments, so it can run off the event loop."""
        ...


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

    def infer_rows(self, x: np.ndarray, state: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
        out, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._rates[rate]})
        return out[:, 0].astype(np.float32), new_state


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

    def infer_rows(self, x: np.ndarray, state: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out, new_state = self._models[rate](torch.from_numpy(x), torch.from_numpy(state))
        return out.numpy()[:, 0].astype(np.float32), new_state.numpy()


def load_vad(backend: Literal["onnx", "torch"] = "onnx") -> VadModel:
    """Load the process's one VAD model."""
    if backend == "onnx":
        return OnnxVad()
    if backend == "torch":
        return TorchVad()
    raise ValueError(f"unknown VAD backend {backend!r}")


ProbabilityCallback = Callable[[np.ndarray, float], None]


class BatchedVadStream:
    """One call's VAD in the batcher: submitted windows come back, in order, with their probability."""

    def __init__(self, batcher: VadBatcher, sample_rate: int, on_probability: ProbabilityCallback) -> None:
        self.batcher = batcher
        self.rows = batcher.rows(sample_rate)  # its sample_rate is this stream's
        self.window_samples = self.rows.window_samples
        self.row = self.rows.take()  # this call's row of recurrent state and audio context
        self.on_probability = on_probability
        self.pending: deque[np.ndarray] = deque()
        self.arrivals: deque[float] = deque()  # each pending window's arrival, on the event loop's clock
        self.closed = False

    @property
    def waiting(self) -> int:
        """Windows submitted and not yet answered: the call's backlog (Call caps it)."""
        return len(self.pending)

    def submit(self, window: np.ndarray) -> None:
        if len(window) != self.window_samples:
            raise ValueError(f"VAD window must be {self.window_samples} samples, got {len(window)}")
        if not self.closed:
            self.pending.append(window)
            self.batcher.wake(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pending.clear()
            self.arrivals.clear()
            self.rows.give_back(self.row)
            self.batcher.forget(self)


class StateRows:
    """The recurrent state and audio context of every stream at one rate, one row per stream.

    A batch gathers its streams' rows with one indexing operation and scatters the results back with
    another, instead of stacking and splitting per-call arrays (Python per call and window). Rows are
    only read and written on the event loop's thread; the inference thread sees copies."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self.sample_rate = sample_rate
        self.context_samples = CONTEXT_SAMPLES[sample_rate]
        self.window_samples = WINDOW_SAMPLES[sample_rate]
        self.state = np.zeros((2, 0, 128), np.float32)
        self.context = np.zeros((0, self.context_samples), np.float32)
        self._free: list[int] = []

    def take(self) -> int:
        """A zeroed row for a new stream (the arrays double when full)."""
        if not self._free:
            size = self.context.shape[0]
            grown = max(16, 2 * size)
            state = np.zeros((2, grown, 128), np.float32)
            state[:, :size] = self.state
            context = np.zeros((grown, self.context_samples), np.float32)
            context[:size] = self.context
            self.state, self.context = state, context
            self._free.extend(range(grown - 1, size - 1, -1))
        row = self._free.pop()
        self.state[:, row] = 0.0
        self.context[row] = 0.0
        return row

    def give_back(self, row: int) -> None:
        self._free.append(row)

    def gather(self, rows: np.ndarray, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The model's input for these rows: (context + window scaled to [-1, 1), state)."""
        x = np.empty((len(rows), self.context_samples + self.window_samples), np.float32)
        x[:, : self.context_samples] = self.context[rows]
        np.multiply(np.stack(windows), 1.0 / 32768.0, out=x[:, self.context_samples :], casting="unsafe")
        return x, self.state[:, rows]

    def scatter(self, rows: np.ndarray, x: np.ndarray, new_state: np.ndarray) -> None:
        """Store the rows' new state, and the end of their windows as their next context."""
        self.state[:, rows] = new_state
        self.context[rows] = x[:, -self.context_samples :]


#: A batch waits for every open stream's next window, or until its oldest window has waited this long. Every
#: call completes a window each 32 ms, so with a few calls most batches hold one window of each: at 8 WebRTC
#: calls, 8-window batches every 32 ms cost ~15% less of the server's CPU than ~4-window batches every 16 ms
#: (fewer inferences: each costs far more than its windows, bench/results/webrtc.md). A lone call never waits.
#: A stream that has stopped sending holds the others up by at most this much.
MAX_BATCH_WAIT = 0.032
#: A batch of this many windows costs no less per window when larger (16 kHz: ~59 µs a window at 16, ~58 at
#: 32; 8 kHz: ~35 and ~33), so it goes without waiting for every call, `BIG_BATCH_INTERVAL` after the last
#: batch at the earliest: with many calls a window waits ~8 ms, not the ~16 ms that waiting for every call
#: costs (the phone path at 144 calls: 20-30 ms more p95 turn latency, bench/results/webrtc.md).
BIG_BATCH = 16
BIG_BATCH_INTERVAL = 0.016
#: Even with a thread, a batch of at most this many windows runs on the event loop: it takes ~0.2-0.6 ms (1-8
#: windows at 16 kHz, less at 8 kHz), less CPU than handing it to the thread and its result back (8 WebRTC calls,
#: ~4 windows a batch: 26-29 ms of CPU per call-second with every batch on the loop, 33-34 in the thread).
INLINE_WINDOWS = 8


class VadBatcher:
    """Runs the next window of every call as one batched inference.

    A stream's windows depend on each other through its recurrent state, so a batch holds at most one
    window per stream. A batch starts when every open stream has a window waiting, once `BIG_BATCH` are
    (`BIG_BATCH_INTERVAL` after the last batch), or once its oldest window has waited `max_wait`, so a
    stream that is behind does not fall further behind. With `in_thread`, batches run in one worker thread
    (onnxruntime releases the GIL, so inference uses another core while the event loop does I/O) and each
    probability is handed back on the event loop; while a batch runs, the next one fills up. Batches of at
    most `INLINE_WINDOWS` still run on the loop: for so few the hand-off costs more than it frees. Without,
    the event loop runs the inference itself (a few ms per batch): no hand-off between threads,
    which costs more than it gains when other workers' event loops already keep every core busy
    (bench/results/history.md).
    """

    def __init__(self, model: VadModel, on_batch: Callable[[float, int], None] | None = None, *,
                 in_thread: bool = True, max_wait: float = MAX_BATCH_WAIT) -> None:
        self.model = model
        self.max_wait = max_wait  # tests that feed whole files at once need no gathering
        self.on_batch = on_batch  # (inference seconds, windows) per batch, for metrics
        self._waiting: dict[BatchedVadStream, None] = {}  # insertion-ordered set
        self._open = 0  # streams not closed: when all of them are waiting, the batch is full
        self._go: asyncio.Event | None = None  # the next batch may run
        self._idle: asyncio.Event | None = None
        self._deadline: asyncio.Handle | None = None  # the next batch's start if not full before, at:
        self._deadline_at = math.inf
        self._last_batch = -math.inf  # when the last batch started, on the loop's clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        # None: inference runs on the event loop, which waits for it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad") if in_thread else None
        self._rows: dict[int, StateRows] = {}
        self.batches = 0
        self.windows = 0

    def rows(self, sample_rate: int) -> StateRows:
        """The state rows of the streams at `sample_rate`."""
        if sample_rate not in self._rows:
            self._rows[sample_rate] = StateRows(sample_rate)
        return self._rows[sample_rate]

    def stream(self, sample_rate: int, on_probability: ProbabilityCallback) -> BatchedVadStream:
        self._open += 1
        return BatchedVadStream(self, sample_rate, on_probability)

    def wake(self, stream: BatchedVadStream) -> None:
        """`stream` has a new window (in `pending`): note its arrival and start the batch if it is full."""
        if self._worker is None or self._go is None or self._idle is None:
            self._loop = asyncio.get_running_loop()
            self._go, self._idle = asyncio.Event(), asyncio.Event()
            self._worker = self._loop.create_task(self._run(), name="vad-batcher")
        stream.arrivals.append(self._loop.time())
        self._waiting[stream] = None
        self._idle.clear()
        if self._go_if_full():
            return
        if self._deadline is None:  # the first window waiting: no other waits longer
            self._go_at(stream.arrivals[0] + self.max_wait)
        elif (len(self._waiting) == BIG_BATCH
              and (sooner := self._last_batch + BIG_BATCH_INTERVAL) < self._deadline_at):
            self._deadline.cancel()
            self._go_at(sooner)

    def _go_if_full(self) -> bool:
        """Start the next batch now if every open stream has a window waiting."""
        full = bool(self._waiting) and len(self._waiting) >= self._open
        if full and self._go is not None:
            self._go.set()
        return full

    def _go_at(self, when: float) -> None:
        """The next batch goes at `when` (loop time) unless full before; uvloop gives a past time no timer."""
        assert self._loop is not None and self._go is not None
        self._deadline = self._loop.call_at(when, self._go.set)
        self._deadline_at = when

    def forget(self, stream: BatchedVadStream) -> None:
        """A closed stream: the others no longer wait for its windows."""
        self._open -= 1
        self._waiting.pop(stream, None)
        self._go_if_full()

    async def idle(self) -> None:
        """Wait until every submitted window has been answered."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        assert self._go is not None and self._idle is not None and self._loop is not None
        loop = self._loop
        while True:
            if not self._waiting:
                self._idle.set()
            await self._go.wait()
            self._go.clear()
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._last_batch = loop.time()
            by_rows: dict[StateRows, list[tuple[BatchedVadStream, np.ndarray]]] = {}  # one batch per rate
            streams = list(self._waiting)
            self._waiting.clear()
            oldest = None  # the arrival of the oldest window left waiting, by a stream that is behind
            for stream in streams:
                if stream.closed or not stream.pending:
                    continue
                by_rows.setdefault(stream.rows, []).append((stream, stream.pending.popleft()))
                stream.arrivals.popleft()
                if stream.pending:
                    self._waiting[stream] = None
                    oldest = stream.arrivals[0] if oldest is None else min(oldest, stream.arrivals[0])
            if not self._go_if_full() and oldest is not None:
                self._go_at(oldest + self.max_wait)
            for state_rows, items in by_rows.items():
                rows = np.fromiter((stream.row for stream, _ in items), np.intp, len(items))
                x, state = state_rows.gather(rows, [window for _, window in items])
                started = time.perf_counter()
                if self._executor is not None and len(items) > INLINE_WINDOWS:
                    probabilities, new_state = await loop.run_in_executor(
                        self._executor, self.model.infer_rows, x, state, state_rows.sample_rate)
                else:
                    probabilities, new_state = self.model.infer_rows(x, state, state_rows.sample_rate)
                live = [i for i, (stream, _) in enumerate(items) if not stream.closed]
                if len(live) == len(items):
                    state_rows.scatter(rows, x, new_state)
                elif live:  # a closed stream's row may already belong to a new call
                    keep = np.array(live, np.intp)
                    state_rows.scatter(rows[keep], x[keep], new_state[:, keep])
                if self.on_batch is not None:
                    self.on_batch(time.perf_counter() - started, len(items))
                self.batches += 1
                self.windows += len(items)
                for (stream, window), p in zip(items, probabilities, strict=True):
                    if stream.closed:
                        continue
                    try:
                        stream.on_probability(window, float(p))
                    except Exception:
                        logger.exception("VAD result handler failed")
            await asyncio.sleep(0)  # let the loop run between batches (a backlog's run back to back)
