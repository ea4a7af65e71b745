"""The WebRTC audio path's own codec steps: the bot's voice as Opus packets, the caller's packets as mono."""

from __future__ import annotations

import asyncio
import ctypes.util
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
from callbridge.edge.inbound import AudioJitterBuffer
from callbridge.edge.opus import (
    RTP_FRAME,
    RTP_RATE,
    SETTLE_FRAMES,
    VOICE_RATE,
    CallerVoice,
    OpusError,
    VoiceEncoder,
    libopus,
)
from callbridge.edge.webrtc import IDLE_PACKET_SECONDS, CallAudioTrack, PeerCall, packet_frames

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
VOICE_FRAME = VOICE_RATE // 50  # 20 ms of the Call's audio
HEARD_RATE = 48000  # what a browser's decoder (aiortc's, here) plays


def tone(seconds: float, hz: float = 440.0, level: float = 8000.0, rate: int = VOICE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def encode_all(encoder: VoiceEncoder, voice: np.ndarray, first: int = 0) -> list[av.Packet]:
    """A 20 ms packet per frame of `voice`, stamped on the RTP clock from frame `first`."""
    step = encoder.frame_samples
    return [encoder.packet(voice[k : k + step], (first + n) * RTP_FRAME)
            for n, k in enumerate(range(0, len(voice), step))]


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
    packets = encode_all(encoder, voice)
    pts = len(packets) * RTP_FRAME
    silence = []
    for _ in range(SETTLE_FRAMES + 4):
        silence.append(encoder.packet(None, pts))
        pts += RTP_FRAME
    shared = {bytes(p) for p in silence[SETTLE_FRAMES:]}
    assert len(shared) == 1  # after the settling frames, every silent frame is the same packet
    assert [p.pts for p in packets + silence] == list(range(0, pts, RTP_FRAME))  # the RTP clock, 48 kHz
    heard = decode_all(packets + silence)
    spoken = heard[: len(packets) * RTP_FRAME]
    # Opus keeps the tone: same pitch and about the same level (its look-ahead delays it by a few ms).
    assert peak_hz(spoken[RTP_FRAME:], HEARD_RATE) == pytest.approx(440, abs=10)
    assert 0.7 < np.sqrt(np.mean(spoken[RTP_FRAME:].astype(np.float64) ** 2)) / (8000 / np.sqrt(2)) < 1.3
    assert np.abs(heard[len(spoken) + 2 * RTP_FRAME :]).max() < 50  # and the silence after it is silent


def test_the_first_reply_after_shared_silence_is_clean() -> None:
    """A call starts on the shared packet; its first reply must not start with a click or a burst."""
    encoder = VoiceEncoder()
    packets = [encoder.packet(None, k * RTP_FRAME) for k in range(10)]
    packets += encode_all(encoder, tone(0.2, 300.0), first=10)
    heard = decode_all(packets)
    assert np.abs(heard[: 10 * RTP_FRAME]).max() < 50
    assert np.abs(heard[10 * RTP_FRAME :]).max() < 1.3 * 8000


def test_a_short_last_frame_is_padded() -> None:
    encoder = VoiceEncoder()
    packet = encoder.packet(tone(0.005), 0)
    assert len(decode_all([packet])) == RTP_FRAME


def test_caller_voice_decodes_opus_to_mono() -> None:
    heard: list[np.ndarray] = []
    voice = CallerVoice(heard.append)
    encoder = VoiceEncoder()
    sent = tone(0.5, 500.0)
    for packet in encode_all(encoder, sent):
        voice.put((OPUS, JitterFrame(bytes(packet), packet.pts)))
    assert [len(chunk) for chunk in heard] == [VOICE_FRAME] * (len(sent) // VOICE_FRAME)  # at the Call's rate
    audio = np.concatenate(heard)
    assert audio.dtype == np.int16
    assert abs(peak_hz(audio[VOICE_FRAME:], VOICE_RATE) - 500) < 10


def test_a_browser_s_48_khz_microphone_is_heard_at_the_call_s_rate() -> None:
    heard: list[np.ndarray] = []
    voice = CallerVoice(heard.append)
    microphone = VoiceEncoder(HEARD_RATE)
    sent = tone(0.5, 2500.0, rate=HEARD_RATE)
    for packet in encode_all(microphone, sent):
        voice.put((OPUS, JitterFrame(bytes(packet), packet.pts)))
    audio = np.concatenate(heard)
    assert len(audio) == len(sent) * VOICE_RATE // HEARD_RATE
    assert abs(peak_hz(audio[VOICE_FRAME:], VOICE_RATE) - 2500) < 15
    level = np.sqrt(np.mean(audio[VOICE_FRAME:].astype(np.float64) ** 2)) / (8000 / np.sqrt(2))
    assert 0.7 < level < 1.3


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
    assert 0.18 * VOICE_RATE < len(audio) <= 0.2 * VOICE_RATE  # 0.2 s of 8 kHz G.711, at the Call's rate
    assert abs(peak_hz(audio[-800:], VOICE_RATE) - 400) < 25


def test_without_libopus_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    libopus.cache_clear()
    try:
        with pytest.raises(OpusError, match="apt-get install libopus0"):
            VoiceEncoder()
    finally:
        libopus.cache_clear()


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
        assert 0 <= at - start - pts / RTP_RATE < RTP_FRAME / RTP_RATE + 0.01
    assert len({payload for _, _, payload in sent}) == 1  # the shared silence packet


async def test_a_reply_goes_out_at_once_then_40_ms_a_packet_then_settles_and_idles() -> None:
    peer = TrackPeer()
    track = CallAudioTrack(peer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await track.recv()  # the first (silence) packet
    await asyncio.sleep(0.11)  # idle, mid-way between two 20 ms ticks
    queued = loop.time()
    reply = tone(0.2)
    for i in range(0, len(reply), VOICE_FRAME):
        peer.call.outbox.put(AudioOut(reply[i : i + VOICE_FRAME]))
    mark = PlaybackMark("reply")
    peer.call.outbox.put(mark)
    # The first packet goes out without waiting at all (recv completes in one step), in the slot that has
    # begun: not at the next 20 ms tick.
    pulling = track.recv()
    with pytest.raises(StopIteration) as completed:
        pulling.send(None)
    first = completed.value.value
    assert 0 <= queued - track._start - first.pts / RTP_RATE < RTP_FRAME / RTP_RATE  # type: ignore[operator]
    sent = [(queued, first.pts, bytes(first)), *await pull(track, queued + 0.6)]
    # The bot queued the whole reply: two frames a packet, half the packets (each costs the server more than
    # its encoding), none of them later than a 20 ms packet of its first frame would have been.
    speech = sent[:5]
    assert [pts for _, pts, _ in speech] == [first.pts + 2 * i * RTP_FRAME for i in range(5)]
    gaps = np.diff([at for at, _, _ in speech])
    assert gaps[0] <= 0.04 + 0.01 and np.all(np.abs(gaps[1:] - 0.04) < 0.01), gaps  # then on the 40 ms grid
    # Then SETTLE_FRAMES of real silence at 20 ms (the mark is reached with the frame after the reply's
    # last), then nothing until the next idle packet.
    settling = sent[5 : 5 + SETTLE_FRAMES]
    assert [pts for _, pts, _ in settling] == [speech[-1][1] + (i + 2) * RTP_FRAME for i in range(SETTLE_FRAMES)]
    assert peer.handled == [mark]
    after = sent[5 + SETTLE_FRAMES :]
    assert after and after[0][0] - settling[-1][0] > IDLE_PACKET_SECONDS - 0.03
    decoded = decode_all([av.Packet(payload) for _, _, payload in speech])
    assert len(decoded) == 10 * RTP_FRAME  # the whole reply, at 48 kHz
    assert peak_hz(decoded, HEARD_RATE) == pytest.approx(440, abs=10)


async def test_a_frame_the_bot_has_not_followed_yet_goes_alone() -> None:
    """A bot that speaks no faster than real time is not held back a frame to fill a packet."""
    peer = TrackPeer()
    track = CallAudioTrack(peer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await track.recv()
    frame = tone(0.02)
    peer.call.outbox.put(AudioOut(frame))
    alone = await track.recv()
    peer.call.outbox.put(AudioOut(frame))
    started = loop.time()
    following = await track.recv()
    assert following.pts == alone.pts + RTP_FRAME
    assert loop.time() - started < RTP_FRAME / RTP_RATE + 0.01
    assert len(decode_all([alone])) == RTP_FRAME


async def test_a_caller_whose_offer_limits_packets_to_20_ms_gets_one_frame_a_packet() -> None:
    offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    assert packet_frames(offer) == 2
    assert packet_frames(offer + "a=maxptime:120\r\n") == 2
    assert packet_frames(offer + "a=maxptime:20\r\n") == 1
    peer = TrackPeer()
    track = CallAudioTrack(peer, packet_frames(offer + "a=maxptime:20\r\n"))  # type: ignore[arg-type]
    await track.recv()
    for _ in range(2):
        peer.call.outbox.put(AudioOut(tone(0.02)))
    first, second = await track.recv(), await track.recv()
    assert second.pts - first.pts == RTP_FRAME
    assert len(decode_all([first])) == RTP_FRAME


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
