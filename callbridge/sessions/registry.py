"""The session registry: every live call on every transport, behind one small interface.

One concurrency limit for all transports, unique ids, additional inputs (`set_input`) and outputs
(`fetch_latest_output`, `output_stream`). `Registry` is the interface; `MemoryRegistry` serves one
process. A Redis-backed registry for several replicas implements the same methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from callbridge.core.messages import failed


class RegistryError(Exception):
    """A registry refusal, with the seed's error code for clients."""

    code = "error"

    def body(self) -> dict[str, Any]:
        return failed(self.code)


class ConcurrencyLimitReached(RegistryError):
    code = "concurrency_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(f"concurrency limit of {limit} calls reached")
        self.limit = limit

    def body(self) -> dict[str, Any]:
        return failed(self.code, limit=self.limit)


class ConnectionAlreadyExists(RegistryError):
    code = "connection_already_exists"


class UnknownSession(RegistryError):
    code = "unknown_id"


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


class Registry(Protocol):
    limit: int

    def open(self, session_id: str, transport: str) -> Session: ...
    def close(self, session_id: str) -> None: ...
    def get(self, session_id: str) -> Session: ...
    def count(self, transport: str | None = None) -> int: ...
    def set_input(self, session_id: str, *args: Any) -> None: ...
    def fetch_latest_output(self, session_id: str) -> tuple[Any, ...] | None: ...
    def output_stream(self, session_id: str) -> AsyncIterator[tuple[Any, ...]]: ...


class MemoryRegistry:
    """The registry for one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sessions: dict[str, Session] = {}

    def open(self, session_id: str, transport: str) -> Session:
        """Claim a slot for a new call; raises ConnectionAlreadyExists or ConcurrencyLimitReached."""
        if session_id in self._sessions:
            raise ConnectionAlreadyExists(f"a call with id {session_id!r} already exists")
        if len(self._sessions) >= self.limit:
            raise ConcurrencyLimitReached(self.limit)
        session = Session(id=session_id, transport=transport)
        self._sessions[session_id] = session
        return session

    def close(self, session_id: str) -> None:
        """Release the slot; ending output streams. Closing an unknown id does nothing."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(f"no call with id {session_id!r}") from None

    def count(self, transport: str | None = None) -> int:
        if transport is None:
            return len(self._sessions)
        return sum(1 for s in self._sessions.values() if s.transport == transport)

    # The FastRTC Stream methods, by id.
    def set_input(self, session_id: str, *args: Any) -> None:
        self.get(session_id).set_input(*args)

    def fetch_latest_output(self, session_id: str) -> tuple[Any, ...] | None:
        return self.get(session_id).latest_output

    def output_stream(self, session_id: str) -> AsyncIterator[tuple[Any, ...]]:
        return self.get(session_id).output_stream()
