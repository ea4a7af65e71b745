"""The caller's audio on its way in: RTP packets put in order and decoded the moment they are next, first through
aiortc's receiver, then, once the call's audio is flowing, straight from the ICE connection (`CallerAudio`).

aiortc hands every datagram through four layers of Python before it reaches the decoder: aioice puts it on a
queue that a task of the DTLS transport reads (a task switch per packet), which unprotects it, parses it into
an `RtpPacket` with its header extensions, routes it to the receiver, which keeps its source table, statistics
and payload map, and only then offers it to the jitter buffer. For the caller's Opus stream, ~50 packets a
second per call, that was the largest share of the WebRTC path's CPU left (bench/results/webrtc.md). So once
aiortc's receiver has taken the stream's first packet (it knows the SSRC and the payload type then) and
aiortc's queue holds no other packet of it (so none is overtaken), `CallerAudio` wraps the aioice connection's
`data_received`: a datagram of that SSRC and payload type is unprotected with the DTLS transport's SRTP
session, its header read, counted in the receiver's statistics (aiortc's receiver reports stay right), put in
order and decoded, in the same callback. Every other datagram (DTLS, RTCP, video, the data channel, another
payload type such as DTMF) goes on through aiortc as before.

The parts used are aiortc 1.16's and aioice's private ones (checked at `install`; pyproject pins aiortc):
the receiver's jitter buffer, decoder queue, codecs and stream statistics, the DTLS transport's SRTP session,
the ICE transport's connection and its queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiortc
import numpy as np
import pylibsrtp
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from callbridge.edge.opus import VOICE_RATE, CallerVoice

logger = logging.getLogger("callbridge.webrtc")

#: The RTCRtpReceiver attributes replaced (aiortc 1.16's jitter buffer and decoder queue) and read.
RECEIVER_PARTS = ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__codecs",
                  "_RTCRtpReceiver__remote_streams")
#: A packet that does not come is given up once this many packets wait behind it (60 ms): later ones are not
#: held for it, and its 20 ms are concealed by the decoder.
REORDER_PACKETS = 3
#: A longer gap (the sender paused or restarted its sequence) is skipped without concealment.
MAX_CONCEALED = 5


class AudioJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, but an audio packet leaves it as soon as it is next in sequence.

    An Opus packet is a whole frame, yet aiortc's buffer lets a frame go only once a packet with the next
    timestamp has arrived, and for audio only after four more (its `prefetch`): 100 ms before every frame
    reaches the turn detector, so every end of speech is noticed that late. This buffer takes only the
    stream's first packets (`CallerAudio` takes over); it records the stream's SSRC and payload type."""

    ssrc: int | None = None
    payload_type: int | None = None

    def __init__(self) -> None:
        super().__init__(capacity=16)

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        self.ssrc, self.payload_type = packet.ssrc, packet.payload_type
        return super().add(packet)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packet = self._packets[self._origin % self.capacity] if self._origin is not None else None
        if packet is None:
            return None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)

    @property
    def next_sequence(self) -> int | None:
        """The sequence number of the next packet it would hand on."""
        return self._origin


class ArrivalOrder:
    """Payloads handed on in sequence as they arrive: each as soon as it is next, a missing one given up
    (None: conceal it) once REORDER_PACKETS wait behind it, a late or repeated one dropped."""

    def __init__(self, next_sequence: int) -> None:
        self._next = next_sequence
        self._waiting: dict[int, bytes] = {}

    def add(self, sequence: int, payload: bytes) -> list[bytes | None]:
        ahead = (sequence - self._next) & 0xFFFF
        if ahead >= 0x8000:  # behind: already handed on or given up
            return []
        self._waiting[sequence] = payload
        out: list[bytes | None] = []
        while self._waiting:
            if self._next in self._waiting:
                out.append(self._waiting.pop(self._next))
                self._next = (self._next + 1) & 0xFFFF
            elif len(self._waiting) >= REORDER_PACKETS:
                gap = min((s - self._next) & 0xFFFF for s in self._waiting)
                out.extend([None] * min(gap, MAX_CONCEALED))
                self._next = (self._next + gap) & 0xFFFF
            else:
                break
        return out


class _Packet:
    """What aiortc's stream statistics read of a packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, sequence_number: int, timestamp: int) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp


class CallerAudio:
    """One audio receiver's way in: `install` before the receiver starts, `shortcut` once connected."""

    def __init__(self, on_audio: Callable[[np.ndarray], None], rate: int = VOICE_RATE) -> None:
        self.jitter = AudioJitterBuffer()
        self.voice = CallerVoice(on_audio, rate)
        self.receiver: Any = None
        self.shortcut_packets = 0  # packets taken by the shortcut
        self._order: ArrivalOrder | None = None
        self._stats: Any = None

    def install(self, receiver: Any) -> None:
        missing = [name for name in RECEIVER_PARTS if not hasattr(receiver, name)]
        if missing:
            raise RuntimeError(f"aiortc {aiortc.__version__}'s receiver lacks {', '.join(missing)}: "
                               "callbridge is tested with aiortc 1.16 (pyproject.toml)")
        receiver._RTCRtpReceiver__jitter_buffer = self.jitter
        receiver._RTCRtpReceiver__decoder_queue = self.voice
        self.receiver = receiver

    def shortcut(self) -> None:
        """Take the stream's packets from the ICE connection once aiortc's receiver has learnt it."""
        dtls = self.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        queue = getattr(connection, "_queue", None)
        srtp = getattr(dtls, "_rx_srtp", None)
        if queue is None or srtp is None:
            logger.warning("webrtc: no shortcut for the caller's audio (aiortc %s): it goes through aiortc",
                           aiortc.__version__)
            return
        through_aiortc = connection.data_received
        jitter = self.jitter
        take = self._take
        stream = b""  # the SSRC of the stream, once the shortcut has it

        def data_received(data: bytes, component: int) -> None:
            nonlocal stream
            if len(data) > 12 and data[8:12] == stream and data[1] & 0x7F == jitter.payload_type:
                take(srtp, data)
                return
            through_aiortc(data, component)
            # aiortc's receiver has seen the stream, and this packet of it is the only one left on aiortc's
            # queue: from the next one on, the shortcut takes them.
            if (not stream and jitter.ssrc is not None and len(data) > 12 and queue.qsize() <= 1
                    and data[8:12] == jitter.ssrc.to_bytes(4, "big") and data[1] & 0x7F == jitter.payload_type
                    and self._learn((int.from_bytes(data[2:4], "big") + 1) & 0xFFFF)):
                stream = data[8:12]

        connection.data_received = data_received

    def _learn(self, next_sequence: int) -> bool:
        codec = self.receiver._RTCRtpReceiver__codecs.get(self.jitter.payload_type)
        stats = self.receiver._RTCRtpReceiver__remote_streams.get(self.jitter.ssrc)
        if codec is None or codec.name != "opus" or stats is None:
            return False
        self._stats = stats
        self._order = ArrivalOrder(next_sequence)
        logger.debug("webrtc: the caller's audio (SSRC %d) now comes straight from the ICE connection",
                     self.jitter.ssrc)
        return True

    def _take(self, srtp: pylibsrtp.Session, data: bytes) -> None:
        """One SRTP packet of the stream: unprotected, read, counted, put in order, decoded."""
        try:
            data = srtp.unprotect(data)
        except pylibsrtp.Error:
            return  # as aiortc: not authentic or a replay
        first = data[0]
        start = 12 + 4 * (first & 0x0F)
        if first & 0x10:  # a header extension: its length in 32-bit words
            start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
        end = len(data) - (data[-1] if first & 0x20 else 0)
        if start > end:
            return
        sequence = int.from_bytes(data[2:4], "big")
        self._stats.add(_Packet(sequence, int.from_bytes(data[4:8], "big")))
        self.shortcut_packets += 1
        assert self._order is not None
        for payload in self._order.add(sequence, data[start:end]):
            if payload is None:
                self.voice.conceal()
            else:
                self.voice.decode(payload)
