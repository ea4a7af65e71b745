"""What several callbridge processes (workers on one machine, replicas behind a load balancer) share,
through Redis.

Each process keeps its own calls' Sessions in a MemoryRegistry: a Call needs its Session object, and audio
never leaves the process that holds the socket. Redis holds only what the other processes must see:

- `callbridge:session:{id}` -> the owning worker: ids are unique across every process;
- `callbridge:owned:{worker}`, the ids a worker holds, and `callbridge:workers:{replica}`, its workers: a
  replica's calls are the sum of its workers' sets, counted against its CONCURRENCY_LIMIT by one Lua script,
  so two workers can never both take the last slot;
- channel `callbridge:worker:{worker}`: commands for a worker's calls (set_input, trickled ICE candidates);
- `callbridge:output:{id}` (the latest outputs, JSON) and channel `callbridge:outputs:{id}`: outputs for
  `output_stream` in other processes, then an end marker when the call ends;
- `callbridge:token:{key}`: a single-use token claimed (`claim_once`), until it would have expired anyway.

Values crossing processes are JSON: inputs come from JSON bodies anyway; outputs go through `jsonable`.

Every request to Redis gets ANSWER_SECONDS: a Redis that is down, restarting or cut off raises
ServiceUnavailable quickly instead of holding a webhook or a readiness probe until TCP gives up.
Calls in progress do not need Redis (their audio stays in their process); new calls do. A request that
meets a pooled connection to a Redis that has restarted since is retried once on a new connection (redis-py's
own Retry), so the first call after a restart is not refused.

How the shared state heals: leases, renewed by a heartbeat that writes each worker's own account over
Redis's. A worker is the only authority on the calls it holds, so every LEASE_SECONDS / HEARTBEATS_PER_LEASE
(every RETRY_SECONDS while Redis does not answer) it sends the ids it holds and one script makes Redis agree:
ids it no longer holds are freed (calls that ended while Redis could not be told, which a Redis coming back
with its data, from disk or a replica, would otherwise count for good), ids Redis lost are claimed again (a
Redis that came back empty), and its keys get LEASE_SECONDS more. A worker that dies, or is cut off from
Redis, stops renewing: its ids and slots lapse after LEASE_SECONDS, with nobody having to clean up after it.
Reconciliation alone would leave a worker that never comes back (fewer WORKERS after a restart, a replica
gone) counted for good; expiry alone would count a call that ended during an outage until its lease ran out,
and lose the calls of a Redis that restarted empty. A call that ends while a heartbeat is on its way may be
counted until the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Collection
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
#: How long a worker's claims outlive its last heartbeat: how long a dead or cut-off worker's slots stay taken.
LEASE_SECONDS = 10.0
#: Heartbeats per lease (every 2 s): a few missed beats (a loaded machine, a slow Redis) lose nothing.
HEARTBEATS_PER_LEASE = 5
#: How often a heartbeat is tried again while Redis does not answer: how soon its state heals once it does.
RETRY_SECONDS = 1.0

T = TypeVar("T")

# The calls of a replica: its workers' sets of ids (a dead worker's set has expired: it leaves the replica).
_REPLICA_CALLS = """
local function replica_calls(workers, prefix)
  local total = 0
  for _, worker in ipairs(redis.call('SMEMBERS', workers)) do
    local held = redis.call('SCARD', prefix .. 'owned:' .. worker)
    if held == 0 then redis.call('SREM', workers, worker) end
    total = total + held
  end
  return total
end
"""

_COUNT = _REPLICA_CALLS + """
return replica_calls(KEYS[1], ARGV[1])
"""

_CLAIM = _REPLICA_CALLS + """
local worker, limit, id, lease, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local total = replica_calls(KEYS[2], prefix)
if total >= limit then return -2 end
redis.call('SET', KEYS[1], worker, 'PX', lease)
redis.call('SADD', KEYS[3], id)
redis.call('PEXPIRE', KEYS[3], lease)
redis.call('SADD', KEYS[2], worker)
return total + 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 0
"""

# A worker's own account of its calls written over Redis's: ARGV[5] ids it holds, then the ids it is opening
# (claims in flight, left as they are). Freed: what it no longer holds. Claimed again: what Redis lost.
_RENEW = """
local prefix, worker, lease, finished = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local held, opening = {}, {}
local count = tonumber(ARGV[5])
for i = 6, 5 + count do held[ARGV[i]] = true end
for i = 6 + count, #ARGV do opening[ARGV[i]] = true end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[id] and not opening[id] then
    if redis.call('GET', prefix .. 'session:' .. id) == worker then redis.call('DEL', prefix .. 'session:' .. id) end
    redis.call('SREM', KEYS[1], id)
    redis.call('DEL', prefix .. 'output:' .. id)
    redis.call('PUBLISH', prefix .. 'outputs:' .. id, finished)
  end
end
for id in pairs(held) do
  local session = prefix .. 'session:' .. id
  local owner = redis.call('GET', session)
  if not owner or owner == worker then redis.call('SET', session, worker, 'PX', lease) end
  redis.call('PEXPIRE', prefix .. 'output:' .. id, lease)
  redis.call('SADD', KEYS[1], id)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], lease)
  redis.call('SADD', KEYS[2], worker)
end
return 0
"""


class RedisRegistry:
    """One worker's view of the shared state (the Registry protocol); its own calls' Sessions stay in `here`."""

    def __init__(self, url: str, replica: str, worker: str, limit: int, lease: float = LEASE_SECONDS) -> None:
        self.address = redact_url(url)  # what messages show: never the password
        self.replica = replica
        self.worker = worker
        self.limit = limit
        self.lease = lease
        self.here = MemoryRegistry(limit)
        # One retry on a new connection: a pooled one may lead to a Redis that has restarted since it was used.
        self.redis: redis.Redis = redis.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 1))
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._count = self.redis.register_script(_COUNT)
        self._renew_claims = self.redis.register_script(_RENEW)
        self._opening: set[str] = set()  # ids whose claim is on its way: the heartbeat leaves them alone
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._mirrors: dict[str, asyncio.Task[None]] = {}
        self._undoing: set[asyncio.Task[None]] = set()
        self.here.on_command("input", self._input_here)

    def key(self, kind: str, name: str) -> str:
        return f"{PREFIX}{kind}:{name}"

    async def start(self) -> None:
        """Free what an earlier run of this worker left behind (a crash), then listen for commands and renew
        this worker's claims."""
        await self._renew(held=(), opening=())
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._ask(pubsub.subscribe(self.key("worker", self.worker)))
        loop = asyncio.get_running_loop()
        self._listener = loop.create_task(self._listen(pubsub), name="shared-commands")
        self._heartbeat = loop.create_task(self._beat(), name="shared-heartbeat")

    async def stop(self) -> None:
        for task in (self._listener, self._heartbeat):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(ServiceUnavailable):
            await self._renew(held=(), opening=())  # everything this worker held is freed
        await self.redis.aclose()

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        self.here.on_command(kind, handler)

    # Calls opening and ending.

    async def open(self, call_id: str, transport: str) -> Session:
        """Claim the id and a slot in Redis, then hold the Session here; its outputs are mirrored to Redis."""
        self._opening.add(call_id)
        try:
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
        finally:
            self._opening.discard(call_id)
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
            logger.error("call %s: could not free its shared slot (the first heartbeat Redis answers frees it): %s",
                         call_id, exc)

    async def _take(self, call_id: str) -> None:
        """Take the id and a slot of this replica's limit; raises ConnectionAlreadyExists,
        ConcurrencyLimitReached or ServiceUnavailable (then the claim may or may not have been made:
        `_give_back` undoes it either way)."""
        result = await self._ask(self._claim(
            keys=[self.key("session", call_id), self.key("workers", self.replica), self.key("owned", self.worker)],
            args=[self.worker, self.limit, call_id, self._lease_ms, PREFIX]))
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
            keys=[self.key("session", call_id), self.key("owned", self.worker), self.key("output", call_id),
                  self.key("outputs", call_id)],
            args=[self.worker, call_id, json.dumps(END)]))

    async def count(self) -> int:
        """Calls in progress on this replica (every live worker)."""
        return int(await self._ask(self._count(keys=[self.key("workers", self.replica)], args=[PREFIX])))

    async def claim_once(self, key: str, seconds: float) -> bool:
        claimed = self.redis.set(self.key("token", key), self.worker, nx=True, px=max(1, round(seconds * 1000)))
        return bool(await self._ask(claimed))

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

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    async def _renew(self, held: Collection[str], opening: Collection[str]) -> None:
        """Make Redis agree with this worker: the `held` ids are its calls (claimed again if Redis lost them)
        for another lease, every other id it has there is freed, except those it is `opening`."""
        await self._ask(self._renew_claims(
            keys=[self.key("owned", self.worker), self.key("workers", self.replica)],
            args=[PREFIX, self.worker, self._lease_ms, json.dumps(END), len(held), *held, *opening]))

    async def _beat(self) -> None:
        """This worker's claims renewed, HEARTBEATS_PER_LEASE times a lease; while Redis does not answer, every
        RETRY_SECONDS, so what happened meanwhile is written as soon as it is back."""
        beat = self.lease / HEARTBEATS_PER_LEASE
        failing = False
        while True:
            await asyncio.sleep(min(beat, RETRY_SECONDS) if failing else beat)
            try:
                await self._renew(held=self.here.ids(), opening=list(self._opening))
            except ServiceUnavailable as exc:
                if not failing:  # one line when lost and one when back
                    logger.error("shared registry: cannot renew this worker's calls (%s); trying every %g s", exc,
                                 min(beat, RETRY_SECONDS))
                failing = True
                continue
            if failing:
                logger.info("shared registry: this worker's calls renewed")
            failing = False

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
                    pipe.set(self.key("output", session.id), encoded, px=self._lease_ms)
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
