"""Opus both ways for aiortc, in the event loop, on libopus itself: the bot's voice encoded mono, silence for
free (`VoiceEncoder`), and the caller's packets decoded to mono as they leave the jitter buffer (`CallerVoice`),
both at `VOICE_RATE`, the rate the Call's VAD runs at, so no resampling step either way.

aiortc encodes what a track yields with its own `OpusEncoder`: 96 kbps stereo at libopus's highest complexity,
behind a PyAV resampler graph, in the default thread pool (a thread hand-off per frame per call). A track that
yields `av.Packet`s instead is only packetised by aiortc (`RTCRtpSender` calls `encoder.pack`), so the call
pays for one mono encode per frame of speech and nothing per frame of silence:

- voice at `BITRATE` (mono 32 kbps is transparent for speech) and `COMPLEXITY` 5 (about half of complexity
  10's CPU; the difference is not audible on speech at this bitrate);
- between replies, one encoded silence packet, made once for every call. The encoder first codes
  `SETTLE_FRAMES` of real silence after a reply, so its state (and the caller's decoder's) has settled on
  silence before the shared packet takes over, and the next reply starts from the same state on both sides.
  The track sends that packet only now and then (`CallAudioTrack`, edge/webrtc.py).

Why libopus through ctypes and not a binding: through PyAV (FFmpeg's libopus wrapper) a 20 ms encode costs
~230 µs at 48 kHz against ~150 µs here at 16 kHz, a decode ~51 µs to the 48 kHz it always yields against ~29 µs
straight to 16 kHz (bench/opus_bench.py, bench/results/opus.md); opuslib copies every decoded frame through a
Python list (twice the decode's cost, measured once) and has not been released since 2018.
`COMPLEXITY` 5 stays: 3 saves ~35 µs a frame but costs 0.6 PESQ-WB on speech (4.25 -> 3.64; CELT modes are
cheaper still and score ~3.2; measured on espeak-ng speech, bench/results/opus.md).
libopus is the system's (`libopus0` on Debian and Ubuntu, `opus` on Homebrew), found with
`ctypes.util.find_library`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fractions
import logging
import threading
import weakref
from collections.abc import Callable
from functools import cache
from typing import Any

import av
import numpy as np
from aiortc.codecs import get_decoder

from callbridge.codec import FRAME_MS

VOICE_RATE = 16000  # the Call's audio on WebRTC calls, both ways: wideband speech
RTP_RATE = 48000  # Opus's RTP clock, whatever rate is coded (RFC 7587)
RTP_FRAME = RTP_RATE * FRAME_MS // 1000  # one 20 ms frame on the RTP clock
TIME_BASE = fractions.Fraction(1, RTP_RATE)
BITRATE = 32000
COMPLEXITY = 5
SETTLE_FRAMES = 5
MAX_PACKET_BYTES = 1500
MAX_FRAME_MS = 120  # the longest Opus packet a caller may send

_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010

logger = logging.getLogger("callbridge.webrtc")


class OpusError(RuntimeError):
    pass


@cache
def libopus() -> ctypes.CDLL:
    """The system's libopus with the signatures used here; a clear error when it is not installed."""
    name = ctypes.util.find_library("opus")
    if name is None:
        raise OpusError("libopus is not installed: WebRTC calls need it (apt-get install libopus0, "
                        "brew install opus)")
    lib = ctypes.CDLL(name)
    state, pcm, data = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_encoder_create.restype = state
    lib.opus_encoder_ctl.argtypes = [state, ctypes.c_int]  # variadic: the value is passed as a c_int32
    lib.opus_encode.argtypes = [state, pcm, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.restype = state
    lib.opus_decode.argtypes = [state, data, ctypes.c_int32, pcm, ctypes.c_int, ctypes.c_int]
    lib.opus_encoder_destroy.argtypes = lib.opus_decoder_destroy.argtypes = [state]
    lib.opus_strerror.restype = ctypes.c_char_p
    return lib


def _checked(lib: ctypes.CDLL, code: int, what: str) -> int:
    if code < 0:
        raise OpusError(f"{what}: {lib.opus_strerror(code).decode()}")
    return code


class _Encoder:
    """A mono libopus encoder at `rate`: `encode(frame)` -> packet bytes, 20, 40 or 60 ms of int16 in."""

    def __init__(self, rate: int) -> None:
        lib = self._lib = libopus()
        error = ctypes.c_int()
        self._state = lib.opus_encoder_create(rate, 1, _APPLICATION_VOIP, ctypes.byref(error))
        _checked(lib, error.value, f"Opus encoder at {rate} Hz")
        weakref.finalize(self, lib.opus_encoder_destroy, self._state)
        _checked(lib, lib.opus_encoder_ctl(self._state, _SET_BITRATE, ctypes.c_int32(BITRATE)), "bitrate")
        _checked(lib, lib.opus_encoder_ctl(self._state, _SET_COMPLEXITY, ctypes.c_int32(COMPLEXITY)), "complexity")
        self.frame_samples = rate * FRAME_MS // 1000
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def encode(self, frame: np.ndarray) -> bytes:
        frame = np.ascontiguousarray(frame, np.int16)
        size = self._lib.opus_encode(self._state, frame.ctypes.data, len(frame), self._out, MAX_PACKET_BYTES)
        return self._out.raw[: _checked(self._lib, size, "Opus encode")]


@cache
def _silence_packet(rate: int) -> bytes:
    """What the encoder makes of digital silence once it has settled: the same bytes every frame."""
    encoder = _Encoder(rate)
    silence = np.zeros(encoder.frame_samples, np.int16)
    data = b""
    for _ in range(2 * SETTLE_FRAMES):
        data = encoder.encode(silence)
    return data


class VoiceEncoder:
    """One call's outbound Opus stream: `packet(samples)` for one or a few 20 ms frames of speech, `packet(None)`
    for one of silence.

    `rate` is the rate of the samples given (the bot's voice comes at VOICE_RATE; the bench's callers speak
    at 48 kHz, as a browser's microphone does)."""

    def __init__(self, rate: int = VOICE_RATE) -> None:
        self._encoder = _Encoder(rate)
        self.frame_samples = self._encoder.frame_samples
        self._silence = _silence_packet(rate)
        self._settle = 0  # real silence frames still to encode before the shared packet

    @property
    def idle(self) -> bool:
        """Settled on silence: the next silent frame would be the shared packet."""
        return self._settle == 0

    def packet(self, samples: np.ndarray | None, pts: int) -> av.Packet:
        """The packet for the frames from `pts` (on the RTP clock) on: `samples` is int16 mono, one frame or a
        few (up to Opus's 60 ms; a short last frame is padded with silence), None for one frame of silence."""
        if samples is None:
            if self._settle == 0:
                return self._stamp(self._silence, pts)
            self._settle -= 1
            samples = np.zeros(self.frame_samples, np.int16)
        else:
            self._settle = SETTLE_FRAMES
            size = self.frame_samples * max(1, -(-len(samples) // self.frame_samples))
            if len(samples) < size:  # a reply's last, short frame
                samples = np.concatenate([samples, np.zeros(size - len(samples), np.int16)])
        return self._stamp(self._encoder.encode(samples), pts)

    @staticmethod
    def _stamp(data: bytes, pts: int) -> av.Packet:
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


class CallerVoice:
    """Decodes the caller's packets in the event loop and hands their audio to `on_audio`, int16 mono at `rate`.

    aiortc decodes every received frame in a thread of its own per call (`decoder_worker`, fed through a
    `queue.Queue`), to 48 kHz stereo, and hands each frame back to the event loop with
    `run_coroutine_threadsafe` into the track's queue, where a task waits for it: two thread hand-offs and a task
    switch per 20 ms per call, and a downmix. A 20 ms Opus frame decodes in tens of microseconds, less than
    those hand-offs cost. So this object takes the place of that queue (`PeerCall` installs it on the receiver
    before the receiver starts): `put` decodes at once, libopus straight to mono at `rate`, and calls
    `on_audio`; aiortc's decoder thread still starts but waits in `get` until the receiver stops (aiortc's
    `put(None)`), and the track then ends as before. A codec other than Opus is decoded by aiortc's own
    decoder and converted by PyAV. A frame that does not decode is skipped.
    """

    def __init__(self, on_audio: Callable[[np.ndarray], None], rate: int = VOICE_RATE) -> None:
        self._on_audio = on_audio
        self.rate = rate
        lib = self._lib = libopus()
        error = ctypes.c_int()
        self._state = lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        _checked(lib, error.value, f"Opus decoder at {rate} Hz")
        weakref.finalize(self, lib.opus_decoder_destroy, self._state)
        self._buffer = np.empty(rate * MAX_FRAME_MS // 1000, np.int16)
        self._pcm = self._buffer.ctypes.data  # the buffer's address, taken once
        self._other: dict[str, tuple[Any, av.AudioResampler]] = {}
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None) -> None:
        """aiortc's receiver: `(codec, encoded frame)` for each complete frame, None when it stops."""
        if task is None:
            self._stopped.set()
            return
        codec, encoded = task
        if codec.name == "opus":
            self.decode(encoded.data)
            return
        try:
            frames = self._decode_other(codec, encoded)
        except (av.FFmpegError, ValueError) as exc:
            logger.warning("caller audio: a %s frame did not decode: %s", codec.name, exc)
            return
        for frame in frames:
            self._on_audio(frame.to_ndarray().reshape(-1))

    def decode(self, data: bytes) -> None:
        """One Opus packet, decoded to `on_audio`; one that does not decode is skipped."""
        size = self._lib.opus_decode(self._state, data, len(data), self._pcm, len(self._buffer), 0)
        if size < 0:
            logger.warning("caller audio: an Opus frame did not decode: %s", self._lib.opus_strerror(size).decode())
            return
        self._on_audio(self._buffer[:size].copy())

    def conceal(self) -> None:
        """A lost 20 ms frame: libopus's concealment, so the Call's clock does not skip it."""
        size = self._lib.opus_decode(self._state, None, 0, self._pcm, self.rate * FRAME_MS // 1000, 0)
        if size > 0:
            self._on_audio(self._buffer[:size].copy())

    def _decode_other(self, codec: Any, encoded: Any) -> list[av.AudioFrame]:
        if codec.name not in self._other:
            self._other[codec.name] = (get_decoder(codec), av.AudioResampler("s16", "mono", self.rate))
        decoder, resampler = self._other[codec.name]
        return [out for frame in decoder.decode(encoded) for out in resampler.resample(frame)]

    def get(self) -> None:
        """aiortc's decoder thread: nothing to decode there; it waits until the receiver stops."""
        self._stopped.wait()
