"""What several callbridge processes (workers on one machine, replicas behind a load balancer) share,
through Redis.

Each process keeps its own calls' Sessions in a MemoryRegistry: a Call needs its Session object, and audio
never leaves the process that holds the socket. Redis holds only what the other processes must see:

- `callbridge:session:{id}` -> the owning worker: ids are unique across every process;
- `callbridge:calls:{replica}`, a hash worker -> calls: a replica's calls, counted against its
  CONCURRENCY_LIMIT by one Lua script, so two workers can never both take the last slot;
- `callbridge:owned:{worker}`, the ids a worker holds: cleaned up when the worker starts again after a crash;
- channel `callbridge:worker:{worker}`: commands for a worker's calls (set_input, trickled ICE candidates);
- `callbridge:output:{id}` (the latest outputs, JSON) and channel `callbridge:outputs:{id}`: outputs for
  `output_stream` in other processes, then an end marker when the call ends.

Values crossing processes are JSON: inputs come from JSON bodies anyway; outputs go through `jsonable`.

Every request to Redis gets ANSWER_SECONDS: a Redis that is down, restarting or cut off raises
ServiceUnavailable quickly instead of holding a webhook or a readiness probe until TCP gives up.
Calls in progress do not need Redis (their audio stays in their process); new calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import redis.asyncio as redis

from callbridge.core.messages import jsonable
from callbridge.core.session import Session
from callbridge.redact import redact_url
from callbridge.sessions.registry import (
    CommandHandler,
    ConcurrencyLimitReached,
    ConnectionAlreadyExists,
    MemoryRegistry,
    ServiceUnavailable,
    UnknownSession,
)

logger = logging.getLogger("callbridge.shared")

PREFIX = "callbridge:"
END = "__end__"  # the last message on a call's outputs channel
#: How long one request to Redis may take (it answers in well under a millisecond when it is there);
#: below the 2 s a Kubernetes readiness probe waits for /readyz.
ANSWER_SECONDS = 1.0

T = TypeVar("T")

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(n) end
if total >= tonumber(ARGV[2]) then return -2 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return total + 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('SREM', KEYS[3], ARGV[2]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
redis.call('DEL', KEYS[4])
redis.call('PUBLISH', KEYS[5], ARGV[3])
return 0
"""

_FORGET_WORKER = """
local prefix, worker, finished = ARGV[1], ARGV[2], ARGV[3]
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('GET', prefix .. 'session:' .. id) == worker then redis.call('DEL', prefix .. 'session:' .. id) end
  redis.call('DEL', prefix .. 'output:' .. id)
  redis.call('PUBLISH', prefix .. 'outputs:' .. id, finished)
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], worker)
return 0
"""

class RedisRegistry:
    """One worker's view of the shared state (the Registry protocol); its own calls' Sessions stay in `here`."""

    def __init__(self, url: str, replica: str, worker: str, limit: int) -> None:
        self.address = redact_url(url)  # what messages show: never the password
        self.replica = replica
        self.worker = worker
        self.limit = limit
        self.here = MemoryRegistry(limit)
        self.redis: redis.Redis = redis.Redis.from_url(url, decode_responses=True)
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._forget = self.redis.register_script(_FORGET_WORKER)
        self._listener: asyncio.Task[None] | None = None
        self._mirrors: dict[str, asyncio.Task[None]] = {}
        self._undoing: set[asyncio.Task[None]] = set()
        self.here.on_command("input", self._input_here)

    def key(self, kind: str, name: str) -> str:
        return f"{PREFIX}{kind}:{name}"

    async def start(self) -> None:
        """Forget what an earlier run of this worker left behind (a crash), then listen for commands."""
        await self._forget_mine()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._ask(pubsub.subscribe(self.key("worker", self.worker)))
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub), name="shared-commands")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        with contextlib.suppress(ServiceUnavailable):
            await self._forget_mine()
        await self.redis.aclose()

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        self.here.on_command(kind, handler)

    # Calls opening and ending.

    async def open(self, call_id: str, transport: str) -> Session:
        """Claim the id and a slot in Redis, then hold the Session here; its outputs are mirrored to Redis."""
        try:
            await self._take(call_id)
        except ServiceUnavailable as exc:
            logger.error("call %s refused: %s", call_id, exc)
            self._undo_later(call_id)  # in case the claim went through; the caller is not held for it
            raise
        try:
            session = self.here.open_here(call_id, transport)
        except Exception:
            with contextlib.suppress(ServiceUnavailable):
                await self._give_back(call_id)
            raise
        self._mirrors[session.id] = asyncio.get_running_loop().create_task(self._mirror(session))
        return session

    def _undo_later(self, call_id: str) -> None:
        async def undo() -> None:
            with contextlib.suppress(ServiceUnavailable):
                await self._give_back(call_id)

        task = asyncio.get_running_loop().create_task(undo())
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def close(self, call_id: str) -> None:
        await self.here.close(call_id)
        try:
            await self._give_back(call_id)
        except ServiceUnavailable as exc:
            logger.error("call %s: could not free its shared slot: %s", call_id, exc)

    async def _take(self, call_id: str) -> None:
        """Take the id and a slot of this replica's limit; raises ConnectionAlreadyExists,
        ConcurrencyLimitReached or ServiceUnavailable (then the claim may or may not have been made:
        `_give_back` undoes it either way)."""
        result = await self._ask(self._claim(
            keys=[self.key("session", call_id), self.key("calls", self.replica), self.key("owned", self.worker)],
            args=[self.worker, self.limit, call_id]))
        if result == -1:
            raise ConnectionAlreadyExists(f"a call with id {call_id!r} already exists")
        if result == -2:
            raise ConcurrencyLimitReached(self.limit)

    async def _give_back(self, call_id: str) -> None:
        """Free the id and the slot; ends other processes' output streams (after the last output). Does
        nothing for an id this worker does not hold. Raises ServiceUnavailable."""
        mirror = self._mirrors.pop(call_id, None)
        if mirror is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(mirror), 2.0)
            mirror.cancel()
        await self._ask(self._release(
            keys=[self.key("session", call_id), self.key("calls", self.replica), self.key("owned", self.worker),
                  self.key("output", call_id), self.key("outputs", call_id)],
            args=[self.worker, call_id, json.dumps(END)]))

    async def count(self) -> int:
        """Calls in progress on this replica (every worker)."""
        return sum(int(n) for n in (await self._ask(self.redis.hvals(self.key("calls", self.replica)))))

    # Calls held here or by other processes.

    async def set_input(self, call_id: str, *args: Any) -> None:
        try:
            await self.here.set_input(call_id, *args)
        except UnknownSession:
            await self.send_command(call_id, "input", list(args))

    async def _input_here(self, call_id: str, args: Any) -> None:
        await self.here.set_input(call_id, *args)

    async def fetch_latest_output(self, call_id: str) -> tuple[Any, ...] | None:
        try:
            return await self.here.fetch_latest_output(call_id)
        except UnknownSession:
            if not await self._ask(self.redis.exists(self.key("session", call_id))):
                raise
        value = await self._ask(self.redis.get(self.key("output", call_id)))
        return tuple(json.loads(value)) if value is not None else None

    async def send_command(self, call_id: str, kind: str, data: Any) -> None:
        if self.here.holds(call_id):
            await self.here.run_command(call_id, kind, data)
            return
        owner = await self._ask(self.redis.get(self.key("session", call_id)))
        if owner is None:
            raise UnknownSession(f"no call with id {call_id!r}")
        message = json.dumps({"kind": kind, "id": call_id, "data": data})
        if await self._ask(self.redis.publish(self.key("worker", owner), message)) == 0:
            raise UnknownSession(f"the process holding call {call_id!r} is gone")

    async def output_stream(self, call_id: str) -> AsyncIterator[tuple[Any, ...]]:
        """Outputs published from now on, until the call ends; raises UnknownSession at once when no
        process holds the call. Subscribed before the check, so nothing published in between is lost."""
        try:
            return await self.here.output_stream(call_id)
        except UnknownSession:
            pass
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._ask(pubsub.subscribe(self.key("outputs", call_id)))
            if not await self._ask(self.redis.exists(self.key("session", call_id))):
                raise UnknownSession(f"no call with id {call_id!r}")
        except BaseException:
            await pubsub.aclose()
            raise
        return self._outputs(pubsub)

    # Internals.

    async def _forget_mine(self) -> None:
        """Drop every id and slot this worker holds (at start after a crash, and at close)."""
        await self._ask(self._forget(keys=[self.key("owned", self.worker), self.key("calls", self.replica)],
                                     args=[PREFIX, self.worker, json.dumps(END)]))

    async def _ask(self, request: Awaitable[T]) -> T:
        """`request`'s answer within ANSWER_SECONDS, or ServiceUnavailable."""
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                return await request
        except (redis.RedisError, OSError) as exc:  # TimeoutError is an OSError
            reason = str(exc) or f"no answer in {ANSWER_SECONDS:g} s"
            raise ServiceUnavailable(f"cannot use Redis at {self.address}: {reason}") from None

    async def _outputs(self, pubsub: Any) -> AsyncIterator[tuple[Any, ...]]:
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                value = json.loads(message["data"])
                if value == END:
                    return
                yield tuple(value)
        finally:
            await pubsub.aclose()

    async def _mirror(self, session: Session) -> None:
        async for outputs in session.output_stream():
            encoded = json.dumps(jsonable(list(outputs)))
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(self.key("output", session.id), encoded)
                    pipe.publish(self.key("outputs", session.id), encoded)
                    await self._ask(pipe.execute())
            except ServiceUnavailable as exc:
                logger.warning("call %s: output not shared: %s", session.id, exc)

    async def _listen(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._dispatch(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (redis.RedisError, OSError) as exc:
                logger.error("shared registry: command channel lost (%s); resubscribing every second", exc)
                while True:  # one line when lost and one when back, not one a second while Redis is away
                    await asyncio.sleep(1.0)
                    try:
                        await self._ask(pubsub.subscribe(self.key("worker", self.worker)))
                        break
                    except ServiceUnavailable:
                        continue
                logger.info("shared registry: command channel back")

    async def _dispatch(self, raw: str) -> None:
        try:
            command = json.loads(raw)
            await self.here.run_command(command["id"], command["kind"], command["data"])
        except UnknownSession:
            pass  # the call ended meanwhile
        except Exception:
            logger.exception("shared registry: command failed: %.200s", raw)
