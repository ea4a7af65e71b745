"""What unit tests of a Call read: its outbox, once the bot tasks have run."""

from __future__ import annotations

import asyncio

from callbridge.core.call import Call


async def settle(call: Call | None = None) -> None:
    """Let the VAD answer everything pushed, then the bot tasks run until nothing changes."""
    if call is not None:
        await call._vad.batcher.idle()
    for _ in range(50):
        await asyncio.sleep(0.001)


def take_all(call: Call) -> list:
    items = []
    while (item := call.outbox.get_nowait()) is not None:
        items.append(item)
    return items
