"""WebRTC video load: N concurrent aiortc callers against `python -m callbridge`, server CPU per call-second.

    unshare -n python -m bench.video_load --calls 1 8 --seconds 20 --out bench/results/video.md

Run it in a loopback-only network namespace (`unshare -n`; it brings `lo` up itself): the callers and the server
offer 127.0.0.1 only (the server through tests/integration/loopback_ice on its path), so no packet leaves the
machine. Each round starts one server, so the rounds do not share state:

- video: BOT=mirror, modality video. Each caller sends a synthetic 640x480 camera at 30 fps (grey bands with a
  moving bar, so the encoder has motion to code) and counts the frames it receives; it checks the first one is
  the camera mirrored (bright band on the left).
- audio: BOT=echo, modality audio, a silent microphone: the server's per-call audio cost, so a video build's
  audio calls can be compared with another checkout's (`--baseline DIR`, e.g. an export of main) side by side,
  alternating in one run.

Server CPU is user + system time of the server process (all threads) from /proc over the measured window,
after a warm-up; the callers' own CPU is reported too, since they share the machine's two cores with it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fractions
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aioice.ice
import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bench.servers import ROOT, Server, ServerSpec, cpu_seconds, machine_busy_seconds

CAMERA_FPS = 30
CAMERA_SIZE = (480, 640)
BANDS = (40, 100, 160, 220)
AUDIO_RATE = 48000
AUDIO_FRAME = AUDIO_RATE // 50
WARM_UP = 3.0


def camera_frame(index: int) -> np.ndarray:
    """Grey bands dark to bright, left to right, with a black bar moving down a few rows a frame."""
    height, width = CAMERA_SIZE
    row = np.repeat(np.array(BANDS, np.uint8), width // len(BANDS))
    frame = np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)
    top = (index * 8) % height
    frame[top : top + 16] = 0
    return frame


class Camera(MediaStreamTrack):
    """A 30 fps camera in real time (frames made once, then cycled)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.frames = [camera_frame(i) for i in range(CAMERA_SIZE[0] // 8)]
        self.sent = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self.start = self.start or loop.time()
        await asyncio.sleep(max(0.0, self.start + self.sent / CAMERA_FPS - loop.time()))
        frame = av.VideoFrame.from_ndarray(self.frames[self.sent % len(self.frames)], format="bgr24")
        frame.pts, frame.time_base = round(self.sent * 90000 / CAMERA_FPS), fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


class Silence(MediaStreamTrack):
    """A silent 48 kHz stereo microphone in 20 ms frames, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.start: float | None = None
        self.samples = np.zeros((1, 2 * AUDIO_FRAME), np.int16)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self.start = self.start or loop.time()
        await asyncio.sleep(max(0.0, self.start + self.sent * AUDIO_FRAME / AUDIO_RATE - loop.time()))
        frame = av.AudioFrame.from_ndarray(self.samples, format="s16", layout="stereo")
        frame.sample_rate, frame.time_base = AUDIO_RATE, fractions.Fraction(1, AUDIO_RATE)
        frame.pts = self.sent * AUDIO_FRAME
        self.sent += 1
        return frame


@dataclass
class Caller:
    """One call: what it received (frame or audio-frame arrival times) and whether the picture was mirrored."""

    url: str
    call_id: str
    modality: str
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    arrivals: list[float] = field(default_factory=list)
    mirrored: bool | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    track: Camera | Silence = field(init=False)

    async def connect(self) -> None:
        self.track = Camera() if self.modality == "video" else Silence()
        self.pc.addTrack(self.track)
        self.pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self.receive(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.call_id,
                "modality": self.modality}
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.url}/webrtc/offer", json=body, timeout=30)
        response.raise_for_status()
        await self.pc.setRemoteDescription(RTCSessionDescription(**response.json()))

    async def receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.arrivals.append(time.monotonic())
            if track.kind == "video" and self.mirrored is None:
                middle = frame.to_ndarray(format="bgr24")[CAMERA_SIZE[0] // 2 :].mean(axis=(0, 2))
                quarter = middle.size // 4
                self.mirrored = bool(middle[:quarter].mean() > middle[-quarter:].mean() + 100)

    def received_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.arrivals)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def run_round(url: str, pid: int, modality: str, calls: int, seconds: float) -> dict[str, float]:
    callers = [Caller(url, f"{modality}-{calls}-{i}-{time.monotonic_ns()}", modality) for i in range(calls)]
    await asyncio.gather(*(c.connect() for c in callers))
    await asyncio.sleep(WARM_UP)
    start, server_before, own_before = time.monotonic(), cpu_seconds(pid), time.process_time()
    busy_before, sent_before = machine_busy_seconds(), [c.track.sent for c in callers]
    await asyncio.sleep(seconds)
    end, server_after, own_after = time.monotonic(), cpu_seconds(pid), time.process_time()
    busy_after, sent_after = machine_busy_seconds(), [c.track.sent for c in callers]
    received = [c.received_between(start, end) / (end - start) for c in callers]
    sent = sum(after - before for after, before in zip(sent_after, sent_before, strict=True)) / calls / (end - start)
    await asyncio.gather(*(c.close() for c in callers))
    call_seconds = calls * (end - start)
    return {
        "calls": calls,
        "server_cpu_per_call_second": (server_after - server_before) / call_seconds,
        "server_cores": (server_after - server_before) / (end - start),
        "callers_cores": (own_after - own_before) / (end - start),
        "other_cores": (busy_after - busy_before - (server_after - server_before) - (own_after - own_before))
        / (end - start),
        "sent_per_second_per_call": sent,
        "received_per_second_per_call_min": min(received),
        "received_per_second_per_call_mean": sum(received) / len(received),
        "mirrored_calls": sum(bool(c.mirrored) for c in callers),
    }


def server_spec(name: str, bot: str, checkout: Path) -> ServerSpec:
    loopback_ice = ROOT / "tests" / "integration" / "loopback_ice"
    env = {"HOST": "127.0.0.1", "PORT": "{port}", "BOT": bot, "LOG_LEVEL": "WARNING", "MAX_CONCURRENCY": "64",
           "PYTHONPATH": f"{checkout}{os.pathsep}{loopback_ice}"}
    return ServerSpec(name=name, command=(sys.executable, "-m", "callbridge"), env=env, ready_path="/readyz",
                      reply_end="mark", expects_clear=True, silence_ms=0, cwd=checkout)


def measure(spec: ServerSpec, modality: str, calls: int, seconds: float, work: Path) -> dict[str, float]:
    server = Server(spec, work / f"{spec.name}-{modality}-{calls}.log")
    try:
        return {"server": spec.name, "modality": modality,
                **asyncio.run(run_round(server.url, server.pid, modality, calls, seconds))}
    finally:
        server.stop()


def report(rows: list[dict[str, float]], command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# WebRTC video load", "",
        f"Command: `{command}`  ", f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Commit: {commit}  ",
        "Machine: 2 shared cores, other helpers running; the callers (aiortc, VP8 encode + decode in Python) share "
        "the cores with the server, so compare rows of one run only.", "",
        "| server | modality | calls | server CPU s per call-second | server cores | callers' cores "
        "| other processes' cores | sent/s per call | received/s per call (min / mean) | mirrored |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['server']} | {r['modality']} | {r['calls']} | {r['server_cpu_per_call_second']:.3f} "
        f"| {r['server_cores']:.2f} | {r['callers_cores']:.2f} | {r['other_cores']:.2f} "
        f"| {r['sent_per_second_per_call']:.1f} | {r['received_per_second_per_call_min']:.1f} / "
        f"{r['received_per_second_per_call_mean']:.1f} | {r['mirrored_calls'] if r['modality'] == 'video' else '–'} |"
        for r in rows
    ]
    lines += ["", "Sent: camera (30 fps) or microphone (50 frames/s) frames the callers' tracks produced. "
              "Video rows: frames received per second per call (the server shows at most VIDEO_FPS, 15 by "
              "default, of the camera's 30). Audio rows: 20 ms audio frames received per second per call (50 is "
              "real time).", "", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline", type=Path, help="another checkout whose audio calls to compare (e.g. main)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    work = ROOT / "bench" / "work" / "video"
    rows = []
    for calls in args.calls:
        rows.append(measure(server_spec("this", "mirror", ROOT), "video", calls, args.seconds, work))
        audio = [server_spec("this", "echo", ROOT)]
        if args.baseline:
            audio.append(server_spec("baseline", "echo", args.baseline.resolve()))
        rows += [measure(spec, "audio", calls, args.seconds, work) for spec in audio]
        print(json.dumps(rows[-1 - len(audio) :]), flush=True)
    text = report(rows, " ".join(["python -m bench.video_load", *sys.argv[1:]]))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
