"""G.711 against the ITU-T algorithm written out in plain Python (Sun's g711.c reference), for every value."""

from __future__ import annotations

import numpy as np
import pytest

from callbridge.codec import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)

SIGN_BIT = 0x80
QUANT_MASK = 0x0F
SEG_SHIFT = 4
SEG_MASK = 0x70
ULAW_BIAS = 0x84
ULAW_CLIP = 8159  # 14-bit magnitude limit
ULAW_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
ALAW_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def segment(value: int, ends: tuple[int, ...]) -> int:
    return next((i for i, end in enumerate(ends) if value <= end), len(ends))


def ref_ulaw_encode(pcm: int) -> int:
    """16-bit linear -> µ-law: 14-bit magnitude, bias 33, segment + 4 mantissa bits, all bits inverted."""
    pcm >>= 2
    mask = 0x7F if pcm < 0 else 0xFF
    magnitude = min(abs(pcm), ULAW_CLIP) + (ULAW_BIAS >> 2)
    seg = segment(magnitude, ULAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << SEG_SHIFT) | ((magnitude >> (seg + 1)) & QUANT_MASK)) ^ mask


def ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & QUANT_MASK) << 3) + ULAW_BIAS) << ((code & SEG_MASK) >> SEG_SHIFT)
    return ULAW_BIAS - t if code & SIGN_BIT else t - ULAW_BIAS


def ref_alaw_encode(pcm: int) -> int:
    """16-bit linear -> A-law: 13-bit magnitude, segment + 4 mantissa bits, even bits inverted (0x55)."""
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = segment(pcm, ALAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    mantissa = (pcm >> 1) if seg < 2 else (pcm >> seg)
    return ((seg << SEG_SHIFT) | (mantissa & QUANT_MASK)) ^ mask


def ref_alaw_decode(code: int) -> int:
    code ^= 0x55
    t = (code & QUANT_MASK) << 4
    seg = (code & SEG_MASK) >> SEG_SHIFT
    t += 8 if seg == 0 else 0x108
    if seg > 1:
        t <<= seg - 1
    return t if code & SIGN_BIT else -t


LAWS = [
    pytest.param(ulaw_encode, ulaw_decode, ref_ulaw_encode, ref_ulaw_decode, id="ulaw"),
    pytest.param(alaw_encode, alaw_decode, ref_alaw_encode, ref_alaw_decode, id="alaw"),
]


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decode_of_all_256_codes_matches_reference(encode, decode, ref_encode, ref_decode) -> None:
    decoded = decode(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [ref_decode(code) for code in ALL_CODES]


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_encode_of_all_65536_values_matches_reference(encode, decode, ref_encode, ref_decode) -> None:
    encoded = encode(ALL_PCM)
    assert len(encoded) == len(ALL_PCM)
    assert list(encoded) == [ref_encode(value) for value in ALL_PCM.tolist()]


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_encode_takes_bytes_or_array_and_refuses_other_dtypes(encode, decode, ref_encode, ref_decode) -> None:
    assert encode(ALL_PCM.tobytes()) == encode(ALL_PCM)
    assert encode(ALL_PCM[::3]) == encode(ALL_PCM[::3].copy())  # strided views are read, not misread
    assert encode(np.zeros(0, np.int16)) == b""
    with pytest.raises(TypeError):
        encode(ALL_PCM.astype(np.int32))


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decoded_codes_encode_back_and_are_writable(encode, decode, ref_encode, ref_decode) -> None:
    decoded = decode(ALL_CODES)
    # µ-law has two zeros (0x7F and 0xFF); every other code survives the round trip.
    assert sum(a != b for a, b in zip(encode(decoded), ALL_CODES, strict=True)) <= 1
    decoded[0] = 1  # callers may process in place
