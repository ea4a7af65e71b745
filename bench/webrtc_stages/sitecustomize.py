"""Bench-only: a callbridge server started with this folder on PYTHONPATH logs when a WebRTC call's audio
passes each stage, for bench/webrtc_load.py --stages (which reads the log and the caller's own times).

Times are time.monotonic(), the clock of both the server's and the callers' event loops, so the stages line up
across processes. Each line: stage, time, and the frame's RMS (the audio at that stage) or 0. It also offers
127.0.0.1 as the only ICE host address, as tests/integration/loopback_ice does (one sitecustomize runs).
"""

import os
import time

import aioice.ice
import numpy as np

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
_out = open(os.environ["STAGES_LOG"], "a", buffering=1)  # noqa: SIM115 - open for the process's life


def _rms(samples: np.ndarray) -> float:
    samples = samples.astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0


def _log(stage: str, rms: float = 0.0) -> None:
    _out.write(f"{stage} {time.monotonic():.6f} {rms:.1f}\n")


def _install() -> None:
    import aiortc.rtcrtpreceiver as receiver
    from aiortc.codecs import opus

    decode = opus.OpusDecoder.decode

    def traced_decode(self, encoded_frame):  # the decoder thread: the jitter buffer let the packet go
        _log("jitter_out")
        frames = decode(self, encoded_frame)
        for frame in frames:
            _log("decoded", _rms(frame.to_ndarray()))
        return frames

    opus.OpusDecoder.decode = traced_decode
    add = receiver.JitterBuffer.add

    def traced_add(self, packet):
        if not self._is_video:
            _log("rtp_in")
        return add(self, packet)

    receiver.JitterBuffer.add = traced_add
    from callbridge.core.call import Call
    from callbridge.edge import webrtc

    push = Call.push_audio

    def traced_push(self, pcm):
        _log("push_audio", _rms(pcm))
        return push(self, pcm)

    Call.push_audio = traced_push
    ended = Call._on_turn_ended

    def traced_turn(self, event):
        _log("turn_ended")
        return ended(self, event)

    Call._on_turn_ended = traced_turn
    next_audio = webrtc.PeerCall.next_audio

    def traced_next(self):
        samples = next_audio(self)
        _log("next_audio", 0.0 if samples is None else _rms(samples))
        return samples

    webrtc.PeerCall.next_audio = traced_next
    encode = opus.OpusEncoder.encode

    def traced_encode(self, frame, force_keyframe=False):
        out = encode(self, frame, force_keyframe)
        _log("encoded", _rms(frame.to_ndarray()))
        return out

    opus.OpusEncoder.encode = traced_encode


_install()
