"""One benchmark WebRTC call: an aiortc peer that speaks the load script and times what it hears.

The script and the audio are bench/load.py's (hello, a story with a hesitation, a barge-in one second into
the story's reply), upsampled once to 48 kHz and sent in real time as 20 ms Opus packets, mono at 32 kbps as
Chromium sends its microphone by default. The caller's own Opus work is done the way callbridge does it, in
the event loop (callbridge.edge.opus: `VoiceEncoder` codes the microphone, `CallerVoice` decodes what it
hears), not in aiortc's encoder and decoder threads: the callers share the machine's two cores with the
server, and every millisecond they spend is one the server does not get.

The call signals with the FastRTC contract both servers speak: `POST /webrtc/offer` with
`{sdp, type, webrtc_id}` and a data channel named "text".

What the caller hears is timed where a phone caller's is (bench/caller.py stamps each media message as it
arrives): the caller's way in (callbridge's `CallerAudio`) hands each packet on as it arrives
in sequence, not after aiortc's default 100 ms that would add the same constant to both servers.
The microphone has a faint noise floor, as a real one does, so the reply's
first frame carries sound even where it echoes the moment before the caller spoke. The turn latency counts
the reply's first frame that is not the digital silence both servers send between replies (`SOUND_RMS`), as
a phone caller counts the first media message; the audible latency counts its first frame at `AUDIBLE_RMS`,
which Opus reaches only on the 2nd or 3rd frame of a sound as faint as the noise floor (it ramps a new sound
in), and at once for speech. A reply frame is speech above `LOUD_RMS`; replies are runs of loud frames with
less than `REPLY_GAP` of quiet inside.

Measured per call (`WebRTCResult`): turn latency (the frame that carried the end of the caller's speech left
-> first reply frame) and audible latency, the old reply still heard after the barge-in's onset, stalls (a
reply's audio running out more than `STALL_SLACK` before its next packet arrives), and failures (no answer to
the offer, no connection, turn unanswered).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from callbridge.edge.inbound import CallerAudio
from callbridge.edge.opus import VoiceEncoder

RATE = 48000
FRAME = RATE // 50
SPEECH_LEVEL = 300  # |sample| at or above: the caller is speaking (espeak-ng peaks are ~10,000)
LOUD_RMS = 200.0  # a reply frame at or above this RMS is speech
NOISE_RMS = 20.0  # the microphone's noise floor (-64 dBFS), always on, as a real one's
SOUND_RMS = 1.0  # a reply frame at or above this RMS is not the digital silence sent between replies (< 0.2)
AUDIBLE_RMS = 8.0  # a reply frame at or above this RMS is audible: the echo of the noise floor at least
REPLY_GAP = 0.6  # seconds of quiet that end a reply
SPLIT_GAP = 0.25  # seconds of quiet before the reply to a turn whose first reply began while the caller spoke
#: A reply's next packet arriving this long after the audio of the last one has played out: the caller's
#: player ran dry (with 20 ms packets: more than 60 ms between two).
STALL_SLACK = 0.04
TURN_TIMEOUT = 10.0
TURNS = ("hello", "story", "interrupt")
BARGE_IN_AFTER = 1.0


@dataclass(frozen=True)
class Script48:
    """The caller's lines at 48 kHz."""

    hello: np.ndarray
    story: np.ndarray
    interrupt: np.ndarray


def speech_span(samples: np.ndarray) -> tuple[int, int]:
    """First and last sample index at speech level."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= SPEECH_LEVEL)
    return int(loud[0]), int(loud[-1])


class Microphone(MediaStreamTrack):
    """The caller's voice: whatever `say` queued, then silence, in 20 ms Opus packets paced in real time.

    Records when each frame left, so a sample's position gives the time it was sent."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.encoder = VoiceEncoder(RATE)  # a browser's microphone: 48 kHz
        self.noise = np.random.default_rng().normal(0.0, NOISE_RMS, 10 * RATE).astype(np.int32)
        self.script = np.zeros(0, np.int16)
        self.position = 0
        self.sent: list[float] = []
        self._start: float | None = None

    def say(self, samples: np.ndarray) -> int:
        """Queue `samples` right after what has been played; returns the position they start at."""
        at = max(self.position, len(self.script))
        self.script = np.concatenate([self.script, np.zeros(at - len(self.script), np.int16), samples])
        return at

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self.position / RATE - loop.time()))
        chunk = self.script[self.position : self.position + FRAME]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        at = self.position % (len(self.noise) - FRAME)
        chunk = np.clip(chunk + self.noise[at : at + FRAME], -32768, 32767).astype(np.int16)
        packet = self.encoder.packet(chunk, self.position)
        self.position += FRAME
        self.sent.append(loop.time())
        return packet

    def time_of(self, position: int) -> float:
        return self.sent[position // FRAME]


@dataclass
class WebRTCResult:
    index: int
    failure: str | None = None
    turn_latency: list[float | None] = field(default_factory=list)  # seconds, per turn
    audible_latency: list[float | None] = field(default_factory=list)  # seconds, per turn
    split_replies: int = 0
    speech_ends: list[float] = field(default_factory=list)  # time.monotonic(), per turn (for --stages)
    old_reply_after_onset: float | None = None
    reply_seconds: float = 0.0
    stall_seconds: float = 0.0
    call_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs(times: np.ndarray, gap: float) -> list[tuple[float, float]]:
    """Runs of frame times with less than `gap` between neighbours: (first, last)."""
    found: list[tuple[float, float]] = []
    for t in times:
        if found and t - found[-1][1] < gap:
            found[-1] = (found[-1][0], float(t))
        else:
            found.append((float(t), float(t)))
    return found


class WebRTCCaller:
    def __init__(self, base_url: str, script: Script48, lead_in: float) -> None:
        self.base_url = base_url
        self.script = script
        self.lead_in = lead_in
        self.mic = Microphone()
        self.arrivals: list[float] = []
        self.loudness: list[float] = []
        self.held: list[float] = []  # seconds of audio each arrival brought (a packet may hold several frames)
        self.marks: dict[str, int] = {}  # "<phrase>_onset" / "_end" -> microphone position
        self.failure: str | None = None
        self.started = 0.0
        self.ended = 0.0

    def _heard(self, since: float) -> bool:
        """Whether a loud frame arrived after `since`."""
        for t, rms in zip(reversed(self.arrivals), reversed(self.loudness), strict=True):
            if t <= since:
                return False
            if rms >= LOUD_RMS:
                return True
        return False

    def _last_loud(self) -> float:
        for t, rms in zip(reversed(self.arrivals), reversed(self.loudness), strict=True):
            if rms >= LOUD_RMS:
                return t
        return 0.0

    def _hear(self, samples: np.ndarray) -> None:
        """Each frame the caller hears, decoded (`CallerVoice`) the moment its packet is next in sequence."""
        self.arrivals.append(asyncio.get_running_loop().time())
        self.held.append(len(samples) / RATE)
        pcm = samples.astype(np.float32)
        self.loudness.append(float(np.sqrt(np.mean(pcm * pcm))))

    def _listen_on(self, pc: RTCPeerConnection) -> CallerAudio:
        """callbridge's way in on the caller's audio receiver (edge/webrtc.py's `PeerCall` does the same)."""
        inbound = CallerAudio(self._hear, RATE)
        inbound.install(next(t for t in pc.getTransceivers() if t.kind == "audio").receiver)
        return inbound

    async def _say(self, name: str, samples: np.ndarray) -> float:
        """Speak; returns when the frame with the last speech sample has left, and that time."""
        at = self.mic.say(samples)
        onset, end = speech_span(samples)
        self.marks[name + "_onset"], self.marks[name + "_end"] = at + onset, at + end
        while self.mic.position <= at + end:
            await asyncio.sleep(0.02)
        return self.mic.time_of(at + end)

    async def _wait_reply(self, since: float, *, whole: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TURN_TIMEOUT
        while loop.time() < deadline:
            if self._heard(since) and (not whole or loop.time() - self._last_loud() > REPLY_GAP):
                return
            await asyncio.sleep(0.02)

    async def run(self, session: aiohttp.ClientSession) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        connected = asyncio.Event()

        inbound: CallerAudio | None = None

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected" and not connected.is_set():
                connected.set()
                if inbound is not None:
                    inbound.shortcut()

        try:
            pc.addTrack(self.mic)
            inbound = self._listen_on(pc)
            pc.createDataChannel("text")
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "webrtc_id": uuid.uuid4().hex}
            async with session.post(self.base_url + "/webrtc/offer", json=body) as response:
                answer = json.loads(await response.text())
                if response.status != 200 or "sdp" not in answer:
                    self.failure = f"offer refused: HTTP {response.status} {str(answer)[:120]}"
                    return
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            try:
                await asyncio.wait_for(connected.wait(), 15)
            except TimeoutError:
                self.failure = "no connection within 15 s"
                return
            loop = asyncio.get_running_loop()
            self.started = loop.time()
            await asyncio.sleep(self.lead_in)
            hello_end = await self._say("hello", self.script.hello)
            await self._wait_reply(hello_end, whole=True)
            await asyncio.sleep(0.5)
            story_end = await self._say("story", self.script.story)
            await self._wait_reply(story_end, whole=False)
            await asyncio.sleep(BARGE_IN_AFTER)
            interrupt_end = await self._say("interrupt", self.script.interrupt)
            await self._wait_reply(interrupt_end + 0.3, whole=True)
            self.ended = loop.time()
        except Exception as exc:  # a benchmark call never raises: the failure is its result
            self.failure = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            await pc.close()

    @staticmethod
    def _reply_starts(ends: dict[str, float], sound_at: np.ndarray, loud_at: np.ndarray) -> dict[str, float | None]:
        """Per turn, end of speech -> its reply's first frame among `sound_at` (None: unanswered).

        A reply to a turn begins after the turn's speech ended: its first frame with sound after silence (the
        echo of the turn's first audio, the noise floor before the speech), or, where a reply began while the
        caller spoke (FastRTC splits a turn at a hesitation) and its rest runs into the answer to the turn, its
        first speech after a moment of quiet."""
        starts = sorted(start for start, _ in runs(sound_at, SPLIT_GAP) + runs(loud_at, SPLIT_GAP))
        latency: dict[str, float | None] = {}
        for name in TURNS:
            # The interrupt's own reply cannot begin within 0.3 s of its end: loud frames until then are the old reply.
            since = ends[name] + (0.3 if name == "interrupt" else 0.0)
            first = next((start for start in starts if start > since), None)
            latency[name] = None if first is None else first - ends[name]
        return latency

    def analyse(self, index: int) -> WebRTCResult:
        result = WebRTCResult(index=index, failure=self.failure, call_seconds=max(0.0, self.ended - self.started))
        if self.failure or len(self.marks) < 6:
            result.failure = result.failure or "the script did not finish"
            return result
        arrivals = np.array(self.arrivals)
        held = np.array(self.held)
        loudness = np.array(self.loudness)
        loud_at = arrivals[loudness >= LOUD_RMS]
        ends = {name: self.mic.time_of(self.marks[name + "_end"]) for name in TURNS}
        onsets = {name: self.mic.time_of(self.marks[name + "_onset"]) for name in TURNS}
        replies = runs(loud_at, REPLY_GAP)
        heard = {rms: self._reply_starts(ends, arrivals[loudness >= rms], loud_at) for rms in (SOUND_RMS, AUDIBLE_RMS)}
        for name in TURNS:
            result.turn_latency.append(heard[SOUND_RMS][name])
            result.audible_latency.append(heard[AUDIBLE_RMS][name])
            result.speech_ends.append(ends[name])
            result.split_replies += sum(1 for start, _ in replies if onsets[name] < start < ends[name])
        onset = onsets["interrupt"]
        answer = ends["interrupt"] + result.turn_latency[-1] if result.turn_latency[-1] is not None else math.inf
        old = [stop for start, stop in runs(loud_at[loud_at < answer], REPLY_GAP) if start < onset <= stop + REPLY_GAP]
        result.old_reply_after_onset = max(0.0, old[0] - onset) if old else 0.0
        for start, stop in replies:
            result.reply_seconds += stop - start + 0.02
            inside = (arrivals >= start) & (arrivals <= stop)
            dry = np.diff(arrivals[inside]) - held[inside][:-1]  # after the last packet's audio played out
            result.stall_seconds += float(np.sum(dry[dry > STALL_SLACK]))
        return result
