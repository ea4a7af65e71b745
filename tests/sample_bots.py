"""Bots the integration tests run inside a real server (BOT=tests.sample_bots:NAME)."""

from __future__ import annotations

import numpy as np

from callbridge.bots.base import AdditionalOutputs, Audio, Bot, EndCall, Transfer, Turn


def tone(seconds: float, rate: int = 8000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


class KeypadBot(Bot):
    """Answers digit d with a beep of (d + 1) * 100 ms; '#' says goodbye and hangs up."""

    input_rate = 8000

    async def on_dtmf(self, digit: str):
        if digit == "#":
            yield Audio(tone(0.5, hz=880), 8000)
            yield EndCall()
        elif digit.isdigit():
            yield Audio(tone((int(digit) + 1) * 0.1), 8000)

    async def reply(self, turn: Turn):
        return
        yield


def labeller(audio: tuple[int, np.ndarray], label: str):
    """A FastRTC-style handler with one additional input: echoes the turn and reports it with the label."""
    rate, samples = audio
    yield AdditionalOutputs({"label": label, "seconds": round(samples.shape[-1] / rate, 2)})
    yield (rate, samples)


class Monologue(Bot):
    """Talks for a minute in 100 ms pieces; logs when its generator is closed."""

    input_rate = 8000

    async def reply(self, turn: Turn):
        import asyncio
        import logging

        try:
            for _ in range(600):
                yield Audio(tone(0.1), 8000)
                await asyncio.sleep(0.05)
        finally:
            logging.getLogger("callbridge.tests").info("monologue generator closed for %s", self.call.call_id)


class PoliteEcho(Bot):
    """Echoes turns; when the service drains, says a 400 ms goodbye before the call ends."""

    input_rate = 8000

    async def reply(self, turn: Turn):
        yield Audio(turn.audio, turn.sample_rate)

    async def farewell(self):
        yield Audio(tone(0.4, hz=660), 8000)


class BlockingBot(Bot):
    """A bot author's mistake: a synchronous wait inside `async def reply` (a blocking STT call, say)."""

    input_rate = 8000

    async def reply(self, turn: Turn):
        import time

        time.sleep(1.0)  # blocks the event loop: every call stalls
        yield Audio(turn.audio, turn.sample_rate)


def star_inputs_handler(audio, *inputs):
    """The README's FastRTC-style handler: `*inputs` must not make it wait for inputs on the phone."""
    rate, samples = audio
    yield rate, samples.reshape(-1)


class EchoKeypadBot(KeypadBot):
    """Echoes turns and answers digits as KeypadBot does: a call with both a spoken reply and DTMF."""

    async def reply(self, turn: Turn):
        yield Audio(turn.audio, turn.sample_rate)


class GreeterBot(Bot):
    """Greets every caller with 2 s of tone, then echoes their turns: a caller should wait for it to end."""

    input_rate = 8000

    async def greet(self):
        yield Audio(tone(2.0, hz=523), 8000)

    async def reply(self, turn: Turn):
        yield Audio(turn.audio, turn.sample_rate)


class TtsRatesBot(Bot):
    """Answers each turn as TTS engines speak: a 440 Hz tone at 22050 Hz, then an 880 Hz one at 44100 Hz."""

    input_rate = 8000

    async def reply(self, turn: Turn):
        for rate, hz in ((22050, 440.0), (44100, 880.0)):
            t = np.arange(int(0.5 * rate)) / rate
            yield Audio((0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


class Receptionist(Bot):
    """Logs what it knows of its call, greets with 0.5 s of tone, then transfers to +15550111; told that the
    transfer failed, it says so with 0.3 s at 880 Hz."""

    input_rate = 8000

    async def greet(self):
        import logging

        logging.getLogger("callbridge.tests").info(
            "receptionist: %s call, answered by %r, can transfer: %s, parameters %s", self.call.direction,
            self.call.answered_by, self.call.can_transfer, dict(sorted(self.call.parameters.items())))
        yield Audio(tone(0.5), 8000)
        yield Transfer("+15550111")

    async def on_transfer_failed(self, to: str, reason: str):
        yield Audio(tone(0.3, hz=880), 8000)

    async def reply(self, turn: Turn):
        return
        yield
