"""The mirror bot (`BOT=mirror`): video and audio-video calls for trying the softphone's camera.

Each camera frame comes back mirrored (as a selfie view) with the server's clock drawn in its top-left corner,
in numpy only. In audio-video calls it also says each turn back, as the echo bot does. Without a camera
(receive mode) it shows a moving colour gradient with the clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from callbridge.bots.echo import EchoBot
from callbridge.bots.video import VideoBot

#: 3x5 bitmaps of the characters a clock needs, row by row ("1": lit).
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ":": "000010000010000", ".": "000000000000010",
}
SCALE = 4  # each bitmap pixel becomes SCALE x SCALE
RECEIVE_SIZE = (240, 320)


def draw_text(frame: np.ndarray, text: str, scale: int = SCALE) -> np.ndarray:
    """`text` (digits, ':' and '.') in white on a black box in the top-left corner of `frame`, in place; the
    part that does not fit is left out."""
    height, width = 5 * scale, 4 * scale * len(text)
    box = np.zeros((height + 2 * scale, width + scale, 3), np.uint8)
    for i, char in enumerate(text):
        glyph = np.array([c == "1" for c in GLYPHS[char]]).reshape(5, 3)
        lit = np.kron(glyph, np.ones((scale, scale), bool))
        box[scale : scale + height, scale + 4 * scale * i : scale + 4 * scale * i + 3 * scale][lit] = 255
    h, w = min(box.shape[0], frame.shape[0]), min(box.shape[1], frame.shape[1])
    frame[:h, :w] = box[:h, :w]
    return frame


def clock(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 10) % 10}"


class MirrorBot(VideoBot, EchoBot):
    modalities: ClassVar[frozenset[str]] = frozenset({"video", "audio-video"})

    def transform(self, frame: np.ndarray, *inputs: Any) -> np.ndarray:
        return draw_text(np.ascontiguousarray(frame[:, ::-1]), clock())

    def frames(self, *inputs: Any) -> Iterator[np.ndarray]:
        rows, cols = np.mgrid[0 : RECEIVE_SIZE[0], 0 : RECEIVE_SIZE[1]]
        step = 0
        while True:
            frame = np.stack([(cols + step) % 256, (rows + step) % 256, np.full_like(rows, 128)], axis=-1)
            yield draw_text(frame.astype(np.uint8), clock())
            step += 4
