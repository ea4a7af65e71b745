"""WebRTC calls on aiortc: Opus audio both ways, the client messages on a data channel, and video
(callbridge.edge.video) in video and audio-video calls.

The caller's Opus is decoded the moment each packet is next in sequence, in the event loop, to mono at the
Call's VAD rate (`CallerAudio`, edge/inbound.py: past aiortc's receive path once the stream flows), and the
bot's voice is encoded from that rate (edge/opus.py, VOICE_RATE). The bot's
audio leaves through `CallAudioTrack`, whose `recv()` aiortc calls for each packet: that is where the
Call's outbox is drained and the frame encoded (`VoiceEncoder`), so a barge-in flush takes effect at the very
next frame. The client's data channel (any label) carries the Call's client messages, queued until it opens;
what the client sends on it is not part of the contract and is ignored. A peer that never connects, a
connection that fails or closes, a bot that hangs up, the optional time limit and shutdown all end the call
the same way.

aiortc and PyAV are imported with this module, which the signalling route loads at the first offer: a
service that never takes a WebRTC call never pays for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Coroutine
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from callbridge.codec import FRAME_MS
from callbridge.core.call import Call
from callbridge.core.messages import AudioOut, ClientMessage, Flush, FrameOut, Hangup, Outbound, PlaybackMark
from callbridge.edge.inbound import CallerAudio
from callbridge.edge.opus import RTP_FRAME, RTP_RATE, VoiceEncoder
from callbridge.edge.video import VideoLink
from callbridge.services import Services
from callbridge.transports.webrtc import Modality, Mode, OfferError

logger = logging.getLogger("callbridge.webrtc")


#: Client messages kept for a data channel that has not opened yet; the oldest go first.
PENDING_MESSAGES = 256
#: Between replies the bot's audio track sends one silence packet this often (Chrome's Opus DTX: 400 ms).
IDLE_PACKET_SECONDS = 0.4
#: A reply's frames go two to a packet when the bot has queued them (see CallAudioTrack), unless the caller's
#: offer asks for less (`a=maxptime`).
PACKET_MS = 40
#: When the bot hangs up, its last frames are still in flight and in the caller's jitter buffer.
HANGUP_DELAY_SECONDS = 0.3


def packet_frames(offer: str) -> int:
    """How many 20 ms frames of the bot's voice go in one packet: PACKET_MS's, or fewer if the offer's audio
    limits packets to less (`a=maxptime`, RFC 4566; aiortc does not read it)."""
    limits = [int(ms) for ms in re.findall(r"^a=maxptime:\s*(\d+)", offer, re.MULTILINE)]
    return max(1, min([PACKET_MS, *limits]) // FRAME_MS)


def parse_candidate(candidate: Any) -> RTCIceCandidate | None:
    """The aiortc candidate, or None for end-of-candidates; OfferError when it is not a candidate."""
    if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
        raise OfferError('"candidate" must be an object with a "candidate" string')
    line = candidate["candidate"].strip()
    if not line:
        return None
    try:
        parsed = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
    except (AssertionError, ValueError, IndexError):
        raise OfferError(f"not an ICE candidate line: {line[:80]!r}") from None
    parsed.sdpMid = candidate.get("sdpMid")
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    return parsed


class CallAudioTrack(MediaStreamTrack):
    """The bot's voice: aiortc pulls one Opus packet per `recv()`, paced here in real time.

    Each frame comes from `PeerCall.next_audio()`, which drains the Call's outbox up to the next audio
    frame. The packets are encoded here (`VoiceEncoder`: mono, silence shared), so aiortc only packetises
    them. A reply goes out 40 ms a packet (`frames`) while the bot has queued its next frame, 20 ms when not:
    half the packets, each of which costs the server more than its encoding (8 calls: 12% less CPU,
    bench/results/webrtc.md), never sent later than its first frame alone would be; a caller who barges in
    may hear the rest of the packet in flight, 20 ms more than before. Between replies, once the encoder has
    settled on silence, the track sends one silence packet every `IDLE_PACKET_SECONDS`, as Chrome's Opus DTX
    does, and the RTP timestamps skip the frames not sent (so the caller's jitter buffer sees a gap in time,
    not a loss): no packet, timer or task switch every 20 ms per idle call, and the next reply's first frame
    goes out the moment the bot queues it instead of at the next 20 ms tick.
    """

    kind = "audio"

    def __init__(self, peer: PeerCall, frames: int = PACKET_MS // FRAME_MS) -> None:
        super().__init__()
        self._peer = peer
        self._frames = frames  # at most, in one packet
        self._encoder = VoiceEncoder()
        self._start: float | None = None
        self._pts = 0  # the next packet's slot on the RTP clock (RTP_RATE samples since `_start`)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
            samples = self._peer.next_audio()
        elif self._encoder.idle:
            samples = await self._after_silence(loop)
        else:
            await self._until_slot(loop)
            samples = self._peer.next_audio()
        frames = [samples] if samples is not None else []
        while (0 < len(frames) < self._frames and len(frames[-1]) == self._encoder.frame_samples
               and (following := self._peer.next_audio()) is not None):
            frames.append(following)  # the reply's next frame is queued already: it goes in this packet
        packet = self._encoder.packet(np.concatenate(frames) if len(frames) > 1 else samples, self._pts)
        self._pts += max(1, len(frames)) * RTP_FRAME
        return packet

    async def _after_silence(self, loop: asyncio.AbstractEventLoop) -> np.ndarray | None:
        """Wait for the bot's next audio or the next idle packet; the RTP clock skips the frames not sent."""
        assert self._start is not None
        until = self._start + (self._pts - RTP_FRAME) / RTP_RATE + IDLE_PACKET_SECONDS  # the last packet's + idle
        while (samples := self._peer.next_audio()) is None and loop.time() < until:
            await self._peer.call.outbox.wait(until)
        begun = int((loop.time() - self._start) * RTP_RATE) // RTP_FRAME * RTP_FRAME  # the latest slot begun
        if begun >= self._pts:
            self._pts = begun
        else:  # the bot spoke within 20 ms of the last packet: its slot has not begun yet
            await self._until_slot(loop)
        return samples

    async def _until_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._start is not None
        delay = self._start + self._pts / RTP_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class PeerCall:
    """One WebRTC call: the peer connection, its Call, and the data channel the client opened."""

    def __init__(self, call: Call, services: Services, mode: Mode, registry: dict[str, PeerCall],
                 modality: Modality = "audio") -> None:
        self.call = call
        self.services = services
        self.mode = mode
        self.has_audio = modality != "video"
        self._registry = registry
        registry[call.id] = self
        self.settings = services.settings
        ice_servers = [RTCIceServer(**server.model_dump()) for server in self.settings.ice_servers]
        # Always an explicit configuration: aiortc's default adds a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.track: CallAudioTrack | None = None
        self.inbound: list[CallerAudio] = []
        self.channel: RTCDataChannel | None = None
        self.video = (VideoLink(call, mode, self.settings.video_fps, None if self.has_audio else self.end)
                      if modality != "audio" else None)
        self._pending: deque[str] = deque(maxlen=PENDING_MESSAGES)
        self._described = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending: asyncio.Task[None] | None = None
        self._connected = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._spawn(self._connect_timeout())

    @property
    def id(self) -> str:
        return self.call.id

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Apply the client's offer and return the answer (aiortc gathers our candidates into it)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._described.set()
        if self.has_audio:
            self._answer_audio(sdp)
        if self.video is not None:
            self.video.answer(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    def _answer_audio(self, offer: str) -> None:
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        for transceiver in audio:  # aiortc has no settings for these: the receiver's private parts are replaced
            inbound = CallerAudio(self._on_caller_audio)
            inbound.install(transceiver.receiver)
            self.inbound.append(inbound)
        if not audio:
            raise OfferError("the offer has no audio: add a microphone track or a recvonly audio transceiver")
        if self.mode == "send":
            audio[0].direction = "recvonly"
        else:
            self.track = CallAudioTrack(self, packet_frames(offer))
            self.pc.addTrack(self.track)
            if self.mode == "receive":
                audio[0].direction = "sendonly"

    async def add_candidate(self, candidate: Any) -> None:
        """Add a trickled remote candidate once the offer is applied (a candidate can overtake its offer)."""
        try:
            await asyncio.wait_for(self._described.wait(), self.settings.webrtc_connect_timeout_seconds)
        except TimeoutError:
            raise OfferError("the offer for this candidate was never applied", 409) from None
        if self._ending is not None:
            raise OfferError(f"the call {self.id!r} has ended", 404)
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception as exc:
            raise OfferError(f"cannot add this candidate: {exc}", 400) from None

    # -- inbound -----------------------------------------------------------------------------------

    def _on_caller_audio(self, pcm: np.ndarray) -> None:
        """Caller audio, mono int16 at VOICE_RATE, as `CallerVoice` decodes it."""
        if self.mode != "receive" and self._ending is None and not self.call.push_audio(pcm):
            self.end("caller audio arrives faster than real time (INBOUND_BACKLOG_SECONDS)")  # as media sockets do

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.video is not None:
            self.video.on_track(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            return
        self.channel = channel
        if channel.readyState == "open":
            self._flush_pending()
        else:
            channel.on("open", self._flush_pending)

    # -- outbound ----------------------------------------------------------------------------------

    def next_audio(self) -> np.ndarray | None:
        """Handle the outbox up to its next audio frame and return that frame (None: nothing to play).

        Called by the track each time a frame is due, so `PlaybackMark` is reached exactly when the reply's
        last frame has gone to the encoder: that is when the caller has heard it."""
        while (item := self.call.outbox.get_nowait()) is not None:
            if isinstance(item, AudioOut):
                return item.samples
            self._handle(item)
        return None

    async def _drain_without_audio(self) -> None:
        """Mode `send` and video calls: no audio goes back, but messages do and replies count as played at once."""
        while True:
            item = await self.call.next_outbound()
            if not isinstance(item, AudioOut):
                self._handle(item)

    def _handle(self, item: Outbound) -> None:
        if isinstance(item, ClientMessage):
            self.send(item)
        elif isinstance(item, PlaybackMark):
            self.call.playback_finished(item.name)
        elif isinstance(item, Hangup):
            self._spawn(self._hang_up())
        elif isinstance(item, FrameOut):
            if self.video is not None:
                self.video.show(item.image)
        elif isinstance(item, Flush):
            pass  # the Call already dropped the queued audio; nothing is buffered past the outbox

    def send(self, message: ClientMessage) -> None:
        """A client message on the data channel, or kept until the channel opens."""
        self._pending.append(message.to_json())
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self.channel is None or self.channel.readyState != "open":
            return
        while self._pending:
            self.channel.send(self._pending.popleft())

    # -- lifetime ----------------------------------------------------------------------------------

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("webrtc %s: connection %s", self.id, state)
        if state == "connected" and not self._connected:
            self._connected = True
            for inbound in self.inbound:
                inbound.shortcut()
            self.call.start()
            if self.track is None:
                self._spawn(self._drain_without_audio())
            if self.video is not None:
                self.video.start()
            if self.settings.webrtc_max_call_seconds:
                self._spawn(self._time_limit(self.settings.webrtc_max_call_seconds))
        elif state in ("failed", "closed"):
            self.end(f"connection {state}")

    async def _hang_up(self) -> None:
        await asyncio.sleep(HANGUP_DELAY_SECONDS)
        self.end("the bot hung up")

    async def _connect_timeout(self) -> None:
        timeout = self.settings.webrtc_connect_timeout_seconds
        await asyncio.sleep(timeout)
        if not self._connected:
            self.end(f"no connection within {timeout:g} s")

    async def _time_limit(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.end(f"time limit of {seconds:g} s reached")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self, reason: str) -> asyncio.Task[None]:
        """End the call once, whoever asks first: close the connection, stop the bot, free the slot.

        The work runs in its own task, so a timer or the track can ask without cancelling itself."""
        if self._ending is None:
            logger.info("webrtc %s: ending: %s", self.id, reason)
            self._ending = asyncio.ensure_future(self._close())
            self._described.set()  # release candidates waiting for an offer that will never be applied
        return self._ending

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.track is not None:
            self.track.stop()
        if self.video is not None:
            await self.video.stop()
        try:
            with contextlib.suppress(Exception):
                await self.pc.close()
        finally:
            await self.services.end_call(self.call)
            if self._registry.get(self.id) is self:
                del self._registry[self.id]
