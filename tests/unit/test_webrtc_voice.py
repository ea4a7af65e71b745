"""The WebRTC audio path's own codec steps: the bot's voice as Opus packets, the caller's frames as mono."""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame

from callbridge.edge.opus import FRAME_SAMPLES, RATE, SETTLE_FRAMES, VoiceEncoder
from callbridge.edge.webrtc import to_mono


def tone(seconds: float, hz: float = 440.0, level: float = 8000.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def decode_all(packets: list[av.Packet]) -> np.ndarray:
    """As the caller's aiortc decodes them: stereo 48 kHz, here back to mono."""
    decoder = OpusDecoder()
    out = [to_mono(frame) for packet in packets for frame in decoder.decode(JitterFrame(bytes(packet), packet.pts))]
    return np.concatenate(out)


def test_speech_goes_through_and_silence_is_one_shared_packet() -> None:
    encoder = VoiceEncoder()
    voice = tone(0.4)
    packets = [encoder.packet(voice[k : k + FRAME_SAMPLES], k) for k in range(0, len(voice), FRAME_SAMPLES)]
    pts = len(voice)
    silence = []
    for _ in range(SETTLE_FRAMES + 4):
        silence.append(encoder.packet(None, pts))
        pts += FRAME_SAMPLES
    shared = {bytes(p) for p in silence[SETTLE_FRAMES:]}
    assert len(shared) == 1  # after the settling frames, every silent frame is the same packet
    assert [p.pts for p in packets + silence] == list(range(0, pts, FRAME_SAMPLES))
    heard = decode_all(packets + silence)
    spoken = heard[: len(voice)]
    # Opus keeps the tone: same pitch and about the same level (its look-ahead delays it by a few ms).
    spectrum = np.abs(np.fft.rfft(spoken[FRAME_SAMPLES:].astype(np.float64)))
    assert abs(np.argmax(spectrum) * RATE / (2 * (len(spectrum) - 1)) - 440) < 10
    assert 0.7 < np.sqrt(np.mean(spoken[FRAME_SAMPLES:].astype(np.float64) ** 2)) / (8000 / np.sqrt(2)) < 1.3
    assert np.abs(heard[len(voice) + 2 * FRAME_SAMPLES :]).max() < 50  # and the silence after it is silent


def test_the_first_reply_after_shared_silence_is_clean() -> None:
    """A call starts on the shared packet; its first reply must not start with a click or a burst."""
    encoder = VoiceEncoder()
    packets = [encoder.packet(None, k * FRAME_SAMPLES) for k in range(10)]
    voice = tone(0.2, 300.0)
    for k in range(0, len(voice), FRAME_SAMPLES):
        packets.append(encoder.packet(voice[k : k + FRAME_SAMPLES], 10 * FRAME_SAMPLES + k))
    heard = decode_all(packets)
    assert np.abs(heard[: 10 * FRAME_SAMPLES]).max() < 50
    assert np.abs(heard[10 * FRAME_SAMPLES :]).max() < 1.3 * 8000


def test_a_short_last_frame_is_padded() -> None:
    encoder = VoiceEncoder()
    packet = encoder.packet(tone(0.005), 0)
    assert len(decode_all([packet])) == FRAME_SAMPLES


def test_to_mono_averages_the_channels() -> None:
    left = np.full(FRAME_SAMPLES, 1000, np.int16)
    right = np.full(FRAME_SAMPLES, -3000, np.int16)
    frame = av.AudioFrame.from_ndarray(np.stack([left, right], axis=1).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate, frame.time_base = RATE, fractions.Fraction(1, RATE)
    mono = to_mono(frame)
    assert mono.dtype == np.int16 and len(mono) == FRAME_SAMPLES
    assert (mono == -1000).all()
    single = av.AudioFrame.from_ndarray(left.reshape(1, -1), format="s16", layout="mono")
    assert (to_mono(single) == left).all()
