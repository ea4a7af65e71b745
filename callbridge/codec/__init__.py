"""The codec layer: G.711 µ-law/A-law <-> PCM16, streaming resampling, and the 20 ms framer."""

from callbridge.codec.frame import FRAME_MS, Rechunker
from callbridge.codec.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from callbridge.codec.resample import Resampler, resample

__all__ = [
    "FRAME_MS",
    "Rechunker",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "resample",
    "ulaw_decode",
    "ulaw_encode",
]
