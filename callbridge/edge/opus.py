"""Opus both ways for aiortc, in the event loop: the bot's voice encoded mono, silence for free (`VoiceEncoder`),
and the caller's packets decoded to mono as they leave the jitter buffer (`CallerVoice`).

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
"""

from __future__ import annotations

import fractions
import logging
import threading
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.codecs import get_decoder

from callbridge.codec import FRAME_MS

RATE = 48000  # aiortc's Opus clock; the bot's audio goes out at this rate
FRAME_SAMPLES = RATE * FRAME_MS // 1000
TIME_BASE = fractions.Fraction(1, RATE)
BITRATE = 32000
COMPLEXITY = 5
SETTLE_FRAMES = 5

logger = logging.getLogger("callbridge.webrtc")


def _encoder() -> av.CodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip", "compression_level": str(COMPLEXITY)}
    return codec


def _silence_packet() -> bytes:
    """What the encoder makes of digital silence once it has settled: the same bytes every frame."""
    codec = _encoder()
    data = b""
    for pts in range(0, 2 * SETTLE_FRAMES * FRAME_SAMPLES, FRAME_SAMPLES):
        for packet in codec.encode(_frame(np.zeros(FRAME_SAMPLES, np.int16), pts)):
            data = bytes(packet)
    return data


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = pts
    return frame


class VoiceEncoder:
    """One call's outbound Opus stream: `packet(samples)` for a 20 ms frame of speech, `packet(None)` for silence."""

    _silence: bytes | None = None  # shared by every call: made at the first call

    def __init__(self) -> None:
        self._codec = _encoder()
        self._settle = 0  # real silence frames still to encode before the shared packet
        if VoiceEncoder._silence is None:
            VoiceEncoder._silence = _silence_packet()

    @property
    def idle(self) -> bool:
        """Settled on silence: the next silent frame would be the shared packet."""
        return self._settle == 0

    def packet(self, samples: np.ndarray | None, pts: int) -> av.Packet:
        """The packet for the frame at `pts` (48 kHz samples); `samples` is int16 mono, at most one frame."""
        if samples is None:
            if self._settle == 0:
                return self._stamp(av.Packet(self._silence), pts)
            self._settle -= 1
            samples = np.zeros(FRAME_SAMPLES, np.int16)
        else:
            self._settle = SETTLE_FRAMES
            if len(samples) < FRAME_SAMPLES:  # a reply's last, short frame
                samples = np.concatenate([samples, np.zeros(FRAME_SAMPLES - len(samples), np.int16)])
        packets = self._codec.encode(_frame(samples, pts))
        # libopus hands back one packet per 20 ms frame (its look-ahead is inside the packet, not a frame behind).
        return self._stamp(packets[0] if packets else av.Packet(self._silence), pts)

    @staticmethod
    def _stamp(packet: av.Packet, pts: int) -> av.Packet:
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


class CallerVoice:
    """Decodes the caller's packets in the event loop and hands their audio to `on_audio`, int16 mono at RATE.

    aiortc decodes every received frame in a thread of its own per call (`decoder_worker`, fed through a
    `queue.Queue`), to 48 kHz stereo, and hands each frame back to the event loop with
    `run_coroutine_threadsafe` into the track's queue, where a task waits for it: two thread hand-offs and a task
    switch per 20 ms per call, and a downmix. A 20 ms Opus frame decodes in tens of microseconds, less than
    those hand-offs cost. So this object takes the place of that queue (`PeerCall` installs it on the receiver
    before the receiver starts): `put` decodes at once, libopus straight to mono, and calls `on_audio`
    (FFmpeg's libopus decoder always yields 48 kHz: the Call's resampler takes it to the VAD's 16 kHz);
    aiortc's decoder thread still starts but waits in `get` until the receiver stops (aiortc's `put(None)`),
    and the track then ends as before. A codec other than Opus is decoded by aiortc's own decoder and
    converted by PyAV. A frame that does not decode is skipped.
    """

    def __init__(self, on_audio: Callable[[np.ndarray], None]) -> None:
        self._on_audio = on_audio
        self._opus = av.CodecContext.create("libopus", "r")
        self._opus.format = "s16"
        self._opus.layout = "mono"
        self._opus.sample_rate = RATE
        self._other: dict[str, tuple[Any, av.AudioResampler]] = {}
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None) -> None:
        """aiortc's receiver: `(codec, encoded frame)` for each complete frame, None when it stops."""
        if task is None:
            self._stopped.set()
            return
        codec, encoded = task
        try:
            if codec.name == "opus":
                frames = self._opus.decode(av.Packet(encoded.data))
            else:
                frames = self._decode_other(codec, encoded)
        except (av.FFmpegError, ValueError) as exc:
            logger.warning("caller audio: a %s frame did not decode: %s", codec.name, exc)
            return
        for frame in frames:
            self._on_audio(frame.to_ndarray().reshape(-1))

    def _decode_other(self, codec: Any, encoded: Any) -> list[av.AudioFrame]:
        if codec.name not in self._other:
            self._other[codec.name] = (get_decoder(codec), av.AudioResampler("s16", "mono", RATE))
        decoder, resampler = self._other[codec.name]
        return [out for frame in decoder.decode(encoded) for out in resampler.resample(frame)]

    def get(self) -> None:
        """aiortc's decoder thread: nothing to decode there; it waits until the receiver stops."""
        self._stopped.wait()
