"""The WebRTC audio path's own codec steps: the bot's voice as Opus packets, the caller's packets as mono."""

from __future__ import annotations

import threading

import av
import numpy as np
from aiortc.codecs import PCMU_CODEC, get_encoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from callbridge.edge.opus import FRAME_SAMPLES, RATE, SETTLE_FRAMES, CallerVoice, VoiceEncoder
from callbridge.edge.webrtc import AudioJitterBuffer

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)


def tone(seconds: float, hz: float = 440.0, level: float = 8000.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def decode_all(packets: list[av.Packet]) -> np.ndarray:
    """As the caller's aiortc decodes them: stereo 48 kHz, here back to mono."""
    decoder = OpusDecoder()
    out = [frame.to_ndarray().reshape(-1, 2)[:, 0] for packet in packets
           for frame in decoder.decode(JitterFrame(bytes(packet), packet.pts))]
    return np.concatenate(out)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


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


def test_caller_voice_decodes_opus_to_mono() -> None:
    heard: list[np.ndarray] = []
    voice = CallerVoice(heard.append)
    encoder = VoiceEncoder()
    sent = tone(0.5, 500.0)
    for k in range(0, len(sent), FRAME_SAMPLES):
        voice.put((OPUS, JitterFrame(bytes(encoder.packet(sent[k : k + FRAME_SAMPLES], k)), k)))
    assert [len(chunk) for chunk in heard] == [RATE // 50] * (len(sent) // FRAME_SAMPLES)
    audio = np.concatenate(heard)
    assert audio.dtype == np.int16
    assert abs(peak_hz(audio[RATE // 50 :], RATE) - 500) < 10


def test_caller_voice_skips_what_does_not_decode_and_takes_other_codecs() -> None:
    heard: list[np.ndarray] = []
    voice = CallerVoice(heard.append)
    voice.put((OPUS, JitterFrame(b"\xff" * 7, 0)))  # not an Opus frame
    assert heard == []
    ulaw = get_encoder(PCMU_CODEC)
    t = np.arange(160) / 8000
    frame = av.AudioFrame.from_ndarray((8000 * np.sin(2 * np.pi * 400 * t)).astype(np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate, frame.pts = 8000, 0
    for k in range(10):
        frame.pts = 160 * k
        payloads, _ = ulaw.encode(frame)
        voice.put((PCMU_CODEC, JitterFrame(payloads[0], 160 * k)))
    audio = np.concatenate(heard)
    assert 0.18 * RATE < len(audio) <= 0.2 * RATE  # 0.2 s of 8 kHz G.711, resampled to 48 kHz
    assert abs(peak_hz(audio[-800:], RATE) - 400) < 25


def test_caller_voice_holds_aiortc_s_decoder_thread_until_the_receiver_stops() -> None:
    voice = CallerVoice(lambda pcm: None)
    waiter = threading.Thread(target=voice.get)
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()
    voice.put(None)
    waiter.join(5)
    assert not waiter.is_alive()


def rtp(sequence: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=sequence % 65536, timestamp=960 * sequence)
    packet._data = bytes([sequence % 256])  # type: ignore[attr-defined]  # as aiortc's receiver depayloads it
    return packet


def test_audio_jitter_buffer_lets_each_packet_go_once_it_is_next() -> None:
    buffer = AudioJitterBuffer()
    out = [buffer.add(rtp(n))[1] for n in (65534, 65535, 0)]  # across the sequence number's wrap
    assert [frame.data for frame in out] == [bytes([254]), bytes([255]), bytes([0])]
    assert buffer.add(rtp(2))[1] is None  # 1 is late: 2 waits for it
    assert buffer.add(rtp(1))[1].data == bytes([1])
    assert buffer.add(rtp(3))[1].data == bytes([2])


def test_audio_jitter_buffer_skips_a_lost_packet() -> None:
    buffer = AudioJitterBuffer()
    buffer.add(rtp(0))
    # 1 never comes: the packets behind it wait, until the buffer is full and lets the gap go.
    out = [buffer.add(rtp(n))[1] for n in range(2, 2 + buffer.capacity)]
    assert all(frame is None for frame in out[:-1])
    assert out[-1] is not None and out[-1].data == bytes([2])
