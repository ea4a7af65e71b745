"""Where a WebRTC server's CPU goes, from py-spy's raw stacks (bench/webrtc_load.py --profile LABEL).

    .venv/bin/python bench/webrtc_profile.py bench/work/webrtc-profile-new-8.raw [more.raw ...]

Prints, per file, the share of busy samples in each part of the path (a stack counts for the first part it
matches, innermost frame first) and the top functions by own time. Waiting threads (a select, a queue get,
the thread pool's idle workers) are left out.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bench.hotspots import IDLE

#: (part, substrings of a frame), matched from the innermost frame outwards.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("Opus encode", ("encode (aiortc/codecs/opus.py", "VoiceEncoder", "_Encoder")),
    ("Opus decode", ("decode (aiortc/codecs/opus.py", "CallerVoice")),
    ("VAD", ("callbridge/core/vad.py",)),
    ("Call: resample, turns, outbox", ("callbridge/core/", "callbridge/codec/")),
    ("callbridge WebRTC edge (tracks, mono)", ("callbridge/edge/webrtc.py",)),
    ("aiortc RTP send (sender, packetise, audio level)", ("aiortc/rtcrtpsender.py", "aiortc/codecs/",
                                                         "aiortc/rtp.py")),
    ("aiortc RTP receive (receiver, jitter buffer, thread hop)", ("aiortc/rtcrtpreceiver.py",
                                                                 "aiortc/jitterbuffer.py")),
    ("DTLS/SRTP (pylibsrtp, transport)", ("aiortc/rtcdtlstransport.py", "pylibsrtp", "aiortc/rtcsctptransport.py")),
    ("ICE (aioice)", ("aioice/",)),
    ("PyAV frames and packets", ("av/",)),
    ("asyncio event loop and thread hand-offs", ("asyncio/", "uvloop", "concurrent/futures", "threading.py",
                                                 "queue.py")),
]


def frames(stack: str) -> list[str]:
    return stack.split(";")


def summarise(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        found = frames(stack)
        if any(pattern in found[-1] for pattern in IDLE):
            continue
        count = int(count_text)
        busy += count
        own[found[-1].split(" (")[0] + " (" + found[-1].split("(")[-1].split(":")[0].split("site-packages/")[-1]
            + ")"] += count
        for frame in reversed(found):
            part = next((name for name, patterns in PARTS if any(p in frame for p in patterns)), None)
            if part is not None:
                parts[part] += count
                break
        else:
            parts["other"] += count
    return parts, own, busy


def main() -> None:
    for name in sys.argv[1:]:
        parts, own, busy = summarise(Path(name))
        print(f"{name}: {busy} busy samples")
        for part, count in parts.most_common():
            print(f"  {100 * count / busy:5.1f}%  {part}")
        print("  top functions by own time:")
        for function, count in own.most_common(15):
            print(f"  {100 * count / busy:5.1f}%  {function}")


if __name__ == "__main__":
    main()
