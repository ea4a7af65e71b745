"""The WebRTC audio path's own codec steps: the bot's voice as Opus packets, the caller's packets as mono."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc.codecs import PCMU_CODEC, get_encoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from callbridge.core.call import Outbox
from callbridge.core.messages import AudioOut, ClientMessage, Outbound, PlaybackMark
from callbridge.edge.opus import FRAME_SAMPLES, RATE, SETTLE_FRAMES, CallerVoice, VoiceEncoder
from callbridge.edge.webrtc import IDLE_PACKET_SECONDS, AudioJitterBuffer, CallAudioTrack, PeerCall

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


class TrackPeer:
    """What `CallAudioTrack` pulls from: a real Outbox drained by `PeerCall.next_audio`, other items recorded."""

    next_audio = PeerCall.next_audio

    def __init__(self) -> None:
        self.call = SimpleNamespace(outbox=Outbox())
        self.handled: list[Outbound] = []

    def _handle(self, item: Outbound) -> None:
        self.handled.append(item)


async def pull(track: CallAudioTrack, until: float) -> list[tuple[float, int, bytes]]:
    """(loop time sent, pts, payload) of each packet the track yields until loop time `until`."""
    loop = asyncio.get_running_loop()
    sent = []
    while loop.time() < until:
        packet = await track.recv()
        sent.append((loop.time(), packet.pts, bytes(packet)))
    return sent


async def test_an_idle_track_sends_a_packet_every_idle_period_and_the_clock_skips_the_rest() -> None:
    peer = TrackPeer()
    track = CallAudioTrack(peer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = await pull(track, start + 1.3)
    gaps = np.diff([at for at, _, _ in sent])
    assert len(sent) == 5, sent  # at 0, 0.4, 0.8, 1.2 and 1.6 s: not 65 packets of 20 ms
    assert np.all(np.abs(gaps - IDLE_PACKET_SECONDS) < 0.03), gaps
    # The RTP clock keeps wall time: each packet's slot is the 20 ms frame that had begun when it went.
    for at, pts, _ in sent:
        assert 0 <= at - start - pts / RATE < FRAME_SAMPLES / RATE + 0.01
    assert len({payload for _, _, payload in sent}) == 1  # the shared silence packet


async def test_a_reply_goes_out_at_once_then_every_20_ms_then_settles_and_idles() -> None:
    peer = TrackPeer()
    track = CallAudioTrack(peer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await track.recv()  # the first (silence) packet
    await asyncio.sleep(0.11)  # idle, mid-way between two 20 ms ticks
    queued = loop.time()
    reply = tone(0.2)
    for i in range(0, len(reply), FRAME_SAMPLES):
        peer.call.outbox.put(AudioOut(reply[i : i + FRAME_SAMPLES]))
    mark = PlaybackMark("reply")
    peer.call.outbox.put(mark)
    # The first frame goes out without waiting at all (recv completes in one step), in the slot that has
    # begun: not at the next 20 ms tick.
    pulling = track.recv()
    with pytest.raises(StopIteration) as completed:
        pulling.send(None)
    first = completed.value.value
    assert 0 <= queued - track._start - first.pts / RATE < FRAME_SAMPLES / RATE  # type: ignore[operator]
    sent = [(queued, first.pts, bytes(first)), *await pull(track, queued + 0.6)]
    speech = sent[:10]
    assert [pts for _, pts, _ in speech] == [first.pts + i * FRAME_SAMPLES for i in range(10)]
    gaps = np.diff([at for at, _, _ in speech])
    assert gaps[0] <= 0.02 + 0.01 and np.all(np.abs(gaps[1:] - 0.02) < 0.01), gaps  # then on the 20 ms grid
    # Then SETTLE_FRAMES of real silence at 20 ms (the mark is reached with the frame after the reply's
    # last), then nothing until the next idle packet.
    settling = sent[10 : 10 + SETTLE_FRAMES]
    assert [pts for _, pts, _ in settling] == [speech[-1][1] + (i + 1) * FRAME_SAMPLES for i in range(SETTLE_FRAMES)]
    assert peer.handled == [mark]
    after = sent[10 + SETTLE_FRAMES :]
    assert after and after[0][0] - settling[-1][0] > IDLE_PACKET_SECONDS - 0.03
    decoded = decode_all([av.Packet(payload) for _, _, payload in speech])
    assert peak_hz(decoded, RATE) == pytest.approx(440, abs=10)


async def test_messages_queued_while_idle_are_handled_at_once() -> None:
    peer = TrackPeer()
    track = CallAudioTrack(peer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await track.recv()
    pulling = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    message = ClientMessage("log", "pause_detected")
    peer.call.outbox.put(message)
    await asyncio.sleep(0.005)
    assert peer.handled == [message] and not pulling.done()  # handled, and no packet for it
    started = loop.time()
    await pulling
    assert loop.time() - started > 0.25  # the idle packet still waits for its time
