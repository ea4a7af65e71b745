"""Run a plain FastRTC-style handler as a bot.

`fn((sample_rate, ndarray), *inputs)` is a generator (sync or async) yielding `(sample_rate, ndarray)`
audio or `AdditionalOutputs`. The audio it receives has FastRTC's shape `(1, n)` int16. A sync
generator runs off the event loop, one `next()` at a time in a worker thread, so a slow handler never
stalls other calls; when the reply is cancelled (barge-in) the generator is closed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from callbridge.bots.base import Bot, BotOutput, CallInfo, Turn

_DONE = object()


def _next_or_done(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _DONE


async def iterate_in_thread(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """Consume a sync generator off the event loop; close it however the consumer stops."""
    try:
        while (item := await asyncio.to_thread(_next_or_done, iterator)) is not _DONE:
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


def declares_inputs(fn: Callable[..., Any], media: int = 1) -> bool:
    """Whether `fn` names a parameter beyond its `media` ones (the audio; none for a video generator in receive
    mode): then each turn asks for additional inputs. A bare `*inputs` does not count, so FastRTC's
    `def handler(audio, *inputs)` never waits for inputs it was not promised (on the phone none can ever come)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in inspect.signature(fn).parameters.values()) > media


class FunctionBot(Bot):
    """Adapts `fn((sample_rate, ndarray), *inputs)` to the bot contract."""

    def __init__(self, call: CallInfo, fn: Callable[..., Any], input_rate: int = 16000) -> None:
        super().__init__(call)
        self.fn = fn
        self.input_rate = input_rate
        self.wants_inputs = declares_inputs(fn)

    async def reply(self, turn: Turn) -> AsyncIterator[BotOutput]:
        result = self.fn((turn.sample_rate, turn.audio.reshape(1, -1)), *turn.inputs)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        elif inspect.isgenerator(result):
            async for item in iterate_in_thread(result):
                yield item
        elif result is not None:
            yield result
