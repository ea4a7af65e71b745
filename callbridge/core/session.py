"""One call's additional inputs and outputs (FastRTC's `set_input` and outputs), as the Call uses them.

The registry (callbridge.sessions) holds every live Session by id; the Call holds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_END = object()


@dataclass
class Session:
    """One live call as the registry sees it."""

    id: str
    transport: str
    started: float = field(default_factory=time.monotonic)
    inputs: tuple[Any, ...] = ()
    latest_output: tuple[Any, ...] | None = None
    _inputs_changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _subscribers: list[asyncio.Queue[Any]] = field(default_factory=list, repr=False)
    closed: bool = False

    def set_input(self, *args: Any) -> None:
        self.inputs = args
        self._inputs_changed.set()

    @property
    def has_fresh_input(self) -> bool:
        """True when `set_input` was called since the inputs were last taken."""
        return self._inputs_changed.is_set()

    async def take_input(self, timeout: float) -> tuple[Any, ...]:
        """The inputs for the next turn: waits up to `timeout` s for fresh ones, else the last ones set."""
        if not self._inputs_changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inputs_changed.wait(), timeout)
        self._inputs_changed.clear()
        return self.inputs

    def publish_output(self, outputs: tuple[Any, ...]) -> None:
        self.latest_output = outputs
        for queue in self._subscribers:
            queue.put_nowait(outputs)

    def output_stream(self) -> AsyncIterator[tuple[Any, ...]]:
        """Each output published from now on, in order, until the call ends. Wakes on publish; no polling.

        The subscription starts when this is called, not at the first iteration, so nothing published
        in between is missed."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(_END)
        else:
            self._subscribers.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Any]) -> AsyncIterator[tuple[Any, ...]]:
        try:
            while (item := await queue.get()) is not _END:
                yield item
        finally:
            if queue in self._subscribers:
                self._subscribers.remove(queue)

    def close(self) -> None:
        self.closed = True
        for queue in self._subscribers:
            queue.put_nowait(_END)


