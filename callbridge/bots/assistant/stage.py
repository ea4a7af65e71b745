"""What every stage (speech-to-text, brain, text-to-speech) shares: one error type and a deadline.

A provider that is down, slow or refuses raises `StageError`; the bot turns it into a spoken apology and
one log line, and the call goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TypeVar

T = TypeVar("T")


class StageError(Exception):
    """A stage's provider failed; the message names the stage, the provider and what it said."""

    def __init__(self, stage: str, provider: str, detail: str) -> None:
        super().__init__(f"{stage} ({provider}): {detail}")
        self.stage = stage
        self.provider = provider
        self.detail = detail


async def first_within(
    items: AsyncGenerator[T, None], seconds: float, stage: str, provider: str
) -> AsyncGenerator[T, None]:
    """`items`, failing with a StageError when the first one takes longer than `seconds`; closes `items`."""
    try:
        try:
            async with asyncio.timeout(seconds):
                first = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StageError(stage, provider, f"nothing within {seconds:g} s") from None
        yield first
        async for item in items:
            yield item
    finally:
        await items.aclose()
