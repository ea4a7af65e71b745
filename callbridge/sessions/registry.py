"""The session registry: every live call on every transport, behind one small interface.

One concurrency limit for all transports, unique ids, additional inputs (`set_input`) and outputs
(`fetch_latest_output`, `output_stream`), and commands for a call wherever it runs. `Registry` is the
interface; `MemoryRegistry` serves one process, `RedisRegistry` several (callbridge.sessions.shared).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from callbridge.core.messages import failed
from callbridge.core.session import Session


class RegistryError(Exception):
    """A registry refusal, with the client contract's error code."""

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


class ServiceUnavailable(RegistryError):
    """New calls are refused: the service is starting or draining, or cannot reach its shared registry."""

    code = "service_unavailable"


CommandHandler = Callable[[str, Any], Awaitable[None]]


class Registry(Protocol):
    """Every live call on every transport: one limit, unique ids, inputs, outputs and commands by id.

    `MemoryRegistry` serves one process; `RedisRegistry` (callbridge.sessions.shared) serves workers and
    replicas that share a Redis. A call's Session always lives in the process that holds its socket."""

    limit: int

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def open(self, call_id: str, transport: str) -> Session:
        """Claim a slot; raises ConnectionAlreadyExists, ConcurrencyLimitReached or ServiceUnavailable."""
        ...

    async def close(self, call_id: str) -> None:
        """Free the slot and end the call's output streams; an unknown id is ignored."""
        ...

    async def count(self) -> int:
        """Calls in progress (on every worker of this replica when shared); may raise ServiceUnavailable."""
        ...

    async def set_input(self, call_id: str, *args: Any) -> None: ...
    async def fetch_latest_output(self, call_id: str) -> tuple[Any, ...] | None: ...
    async def output_stream(self, call_id: str) -> AsyncIterator[tuple[Any, ...]]: ...

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        """`handler(call_id, data)` runs in the process holding the call when `send_command(kind)` reaches it."""
        ...

    async def send_command(self, call_id: str, kind: str, data: Any) -> None:
        """Deliver a command to the process holding `call_id`; raises UnknownSession when none does."""
        ...

    async def claim_once(self, key: str, seconds: float) -> bool:
        """True the first time `key` is claimed within `seconds` (a single-use token); may raise
        ServiceUnavailable."""
        ...


class MemoryRegistry:
    """The registry of one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._commands: dict[str, CommandHandler] = {}
        self._claimed: set[str] = set()
        self._claims_by_expiry: list[tuple[float, str]] = []  # a heap: the next claim to lapse first

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def open(self, call_id: str, transport: str) -> Session:
        return self.open_here(call_id, transport)

    def open_here(self, call_id: str, transport: str) -> Session:
        if call_id in self._sessions:
            raise ConnectionAlreadyExists(f"a call with id {call_id!r} already exists")
        if len(self._sessions) >= self.limit:
            raise ConcurrencyLimitReached(self.limit)
        session = Session(id=call_id, transport=transport)
        self._sessions[call_id] = session
        return session

    async def close(self, call_id: str) -> None:
        session = self._sessions.pop(call_id, None)
        if session is not None:
            session.close()

    async def count(self) -> int:
        return len(self._sessions)

    def holds(self, call_id: str) -> bool:
        return call_id in self._sessions

    def ids(self) -> list[str]:
        """The calls this process holds."""
        return list(self._sessions)

    def get(self, call_id: str) -> Session:
        """A call held by this process; raises UnknownSession."""
        try:
            return self._sessions[call_id]
        except KeyError:
            raise UnknownSession(f"no call with id {call_id!r}") from None

    async def set_input(self, call_id: str, *args: Any) -> None:
        self.get(call_id).set_input(*args)

    async def fetch_latest_output(self, call_id: str) -> tuple[Any, ...] | None:
        return self.get(call_id).latest_output

    async def output_stream(self, call_id: str) -> AsyncIterator[tuple[Any, ...]]:
        return self.get(call_id).output_stream()

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        self._commands[kind] = handler

    async def send_command(self, call_id: str, kind: str, data: Any) -> None:
        self.get(call_id)
        await self.run_command(call_id, kind, data)

    async def claim_once(self, key: str, seconds: float) -> bool:
        now = time.monotonic()
        while self._claims_by_expiry and self._claims_by_expiry[0][0] <= now:
            self._claimed.discard(heapq.heappop(self._claims_by_expiry)[1])
        if key in self._claimed:
            return False
        self._claimed.add(key)
        heapq.heappush(self._claims_by_expiry, (now + seconds, key))
        return True

    async def run_command(self, call_id: str, kind: str, data: Any) -> None:
        handler = self._commands.get(kind)
        if handler is None:
            raise UnknownSession(f"no handler for {kind!r} commands")
        await handler(call_id, data)
