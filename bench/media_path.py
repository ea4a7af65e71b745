"""CPU per inbound Twilio media message through the server's own code, without sockets or a load generator.

    .venv/bin/python bench/media_path.py --calls 80 --seconds 8            # this tree
    .venv/bin/python bench/media_path.py --tree /tmp/old --calls 80         # another tree (git worktree)
    .venv/bin/python bench/media_path.py --profile                          # cProfile's top functions too
    .venv/bin/python bench/media_path.py --answers                          # how long VAD answers take
    .venv/bin/python bench/media_path.py --vad-on-loop                      # inference on the event loop
    .venv/bin/python bench/media_path.py --end-of-turn model                # with the end-of-turn model
    .venv/bin/python bench/media_path.py --end-of-turn model --ask-every-ms 150   # asked again every 150 ms

N Twilio media streams are opened on the edge's `Connection` with a transport that only counts bytes; then
every 20 ms each stream gets one masked WebSocket frame holding a `media` message (a quarter of the streams
every 5 ms, as from bench/load.py's pacer), in real time: the caller's phrases from bench/load.py and
silence, so turns end and the echo bot answers through the paced writer. It reports what one worker process
spends per inbound message on its event loop's thread (frame reading, JSON, µ-law, turn detection, replies)
and per window in the VAD's inference thread; whether the calls are held: each turn's latency (end of the
caller's speech to the bot's first audio, `callbridge_turn_latency_seconds`) and how late the pacer's 5 ms
steps ran (a stalled event loop makes them late). Without the kernel's TCP work and the load generator it shows
changes to the per-message path that a load run hides; still alternate trees (A B A B) and repeat: this
machine's speed swings by up to 2x from minute to minute without any steal (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import hashlib
import hmac
import inspect
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from websockets.speedups import apply_mask

FRAME = 160  # 20 ms at 8 kHz
SLOTS = 4  # the calls' frames arrive in 4 groups 5 ms apart, as from bench/load.py's pacer


class CountingTransport:
    """The edge's view of a socket: writes are counted, nothing else happens."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def client_frame(text: str) -> bytes:
    """A masked text frame, as a client sends it."""
    data = text.encode()
    mask = os.urandom(4)
    size = len(data)
    head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
    return head + mask + apply_mask(data, mask)


def media_frame(stream_sid: str, k: int, payload: str) -> bytes:
    """The k-th `media` message of a stream, as Twilio lays it out."""
    media = {"track": "inbound", "chunk": str(k + 1), "timestamp": str(20 * k), "payload": payload}
    return client_frame(json.dumps({"event": "media", "sequenceNumber": str(k + 2), "streamSid": stream_sid,
                                    "media": media}))


def call_audio(seconds: float) -> np.ndarray:
    """Each call's audio: the caller's phrases with 1.5 s pauses after each (turns end, the bot answers)."""
    from bench.load import load_phrases

    phrases = load_phrases()
    pause = np.zeros(12000, np.int16)
    once = np.concatenate([phrases.hello, pause, phrases.story, pause, phrases.interrupt, pause])
    total = int(seconds * 50) * FRAME
    return np.resize(once, total)


def time_vad_answers() -> tuple[list[float], list[float]]:
    """Record, per window, seconds from its submission to the VAD to its answer reaching the turn detector:
    (windows whose answer started speech or ended a turn, all other windows). Patches the tree's classes
    before any call exists (a call hands its bound `_on_window` to its VAD stream when it is made)."""
    from collections import deque

    from callbridge.core.call import Call
    from callbridge.core.turns import TurnDetector
    from callbridge.core.vad import BatchedVadStream

    deciding: list[float] = []
    others: list[float] = []
    submit, on_window, step = BatchedVadStream.submit, Call._on_window, TurnDetector.step

    def timed_submit(self: Any, window: np.ndarray, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("submitted_at", deque()).append(time.perf_counter())
        submit(self, window, *args, **kwargs)

    def timed_on_window(self: Any, window: np.ndarray, probability: float) -> None:
        waited = time.perf_counter() - self._vad.submitted_at.popleft()
        on_window(self, window, probability)
        (deciding if self.detector.__dict__.pop("decided", False) else others).append(waited)

    def marking_step(self: Any, window: np.ndarray, p: float) -> Any:
        event = step(self, window, p)
        if event is not None:
            self.decided = True
        return event

    BatchedVadStream.submit = timed_submit  # type: ignore[method-assign]
    Call._on_window = timed_on_window  # type: ignore[method-assign]
    TurnDetector.step = marking_step  # type: ignore[method-assign]
    return deciding, others


def model_seconds(state: Any, name: str, labels: dict[str, str] | None = None) -> float:
    """A counter of the services' metrics (0 in a tree or a run without the end-of-turn model)."""
    metrics = getattr(state, "metrics", None)
    value = metrics.registry.get_sample_value(name, labels or {}) if metrics is not None else None
    return value or 0.0


def ms_percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(values, [50, 95])
    return f"{1000 * p50:.1f} / {1000 * p95:.1f}"


def build_edge(calls: int, vad_on_loop: bool, end_of_turn: str,
               ask_every_ms: int = 0) -> tuple[Any, Any, Callable[[str], str], Any]:
    """(edge, services, the webhook's token for a CallSid, Connection class) of the tree on sys.path: this layout
    (callbridge/) or the one before it (app/, codec/, bots/), so trees from either side of the move compare."""
    try:
        from callbridge.core.vad import VadBatcher, load_vad
    except ImportError:
        return build_edge_before_the_move(calls, vad_on_loop)
    from callbridge.edge.media import media_routes
    from callbridge.edge.server import Connection, Edge
    from callbridge.serve import make_services
    from callbridge.settings import Settings
    from callbridge.transports.twilio import call_token, token_secret

    # Its streams answer no pings: the longest ping timeout keeps them from being dropped in a long run. A tree
    # from before END_OF_TURN is only given it when asked for.
    settings = Settings(bot="echo", concurrency_limit=calls + 10, media_ping_timeout_seconds=300,
                        **({"end_of_turn": end_of_turn} if end_of_turn != "silence" else {}),
                        **({"end_of_turn_ask_every_ms": ask_every_ms} if ask_every_ms else {}))
    services = make_services(settings)
    if end_of_turn != "silence":
        services.load_end_of_turn()
    services.vad = VadBatcher(load_vad(settings.vad_backend), in_thread=not vad_on_loop)
    edge = Edge(media_routes(services), "/nonexistent", 1 << 20)
    secret = token_secret(settings.call_token_secret, settings.twilio_auth_token)
    if len(inspect.signature(call_token).parameters) == 2:  # a tree from before tokens expired
        return edge, services, lambda call_sid: call_token(secret, call_sid), Connection
    return edge, services, lambda call_sid: call_token(secret, call_sid, time.time() + 60), Connection


def build_edge_before_the_move(calls: int, vad_on_loop: bool) -> tuple[Any, Any, Callable[[str], str], Any]:
    from app.registry import MemoryRegistry  # type: ignore[import-not-found]
    from app.server import MEDIA_ROUTES, Services, load_bot  # type: ignore[import-not-found]
    from app.settings import Settings  # type: ignore[import-not-found]
    from app.transports.edge import Connection, Edge  # type: ignore[import-not-found]
    from app.transports.twilio import token_secret  # type: ignore[import-not-found]
    from app.vad import VadBatcher, load_vad  # type: ignore[import-not-found]

    settings = Settings(bot="echo")
    state = Services(settings=settings, bot_factory=load_bot("echo"), registry=MemoryRegistry(calls + 10))
    state.vad = VadBatcher(load_vad(settings.vad_backend), **({"in_thread": False} if vad_on_loop else {}))
    secret = token_secret(settings)
    # That tree's token: a hash of the CallSid alone.
    return (Edge(state, MEDIA_ROUTES, "/nonexistent", 1 << 20), state,
            lambda call_sid: hmac.new(secret, call_sid.encode(), hashlib.sha256).hexdigest()[:32], Connection)


def start_message(stream_sid: str, call_sid: str, parameters: dict[str, str]) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "streamSid": stream_sid, "callSid": call_sid, "accountSid": "AC" + "0" * 32, "tracks": ["inbound"],
        "customParameters": parameters, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                        "channels": 1}}})


def encode_ulaw(samples: np.ndarray) -> bytes:
    import audioop

    return audioop.lin2ulaw(samples.astype(np.int16).tobytes(), 2)


def recorded_turn_latencies(state: Any) -> list[float]:
    """Every turn latency the services observe from now on (end of speech -> first audio, s); none in a tree
    without the metric."""
    latencies: list[float] = []
    histogram = getattr(getattr(state, "metrics", None), "turn_latency", None)
    if histogram is not None:
        observe = histogram.observe

        def recording(value: float, *args: Any, **kwargs: Any) -> None:
            latencies.append(value)
            observe(value, *args, **kwargs)

        histogram.observe = recording
    return latencies


async def run(calls: int, seconds: float, profile: bool, answers: bool, vad_on_loop: bool,
              end_of_turn: str, ask_every_ms: int = 0) -> dict[str, Any]:
    waits = time_vad_answers() if answers else None
    edge, state, make_token, Connection = build_edge(calls, vad_on_loop, end_of_turn, ask_every_ms)
    latencies = recorded_turn_latencies(state)
    audio = call_audio(seconds)
    payloads = [base64.b64encode(encode_ulaw(audio[i : i + FRAME])).decode() for i in range(0, len(audio), FRAME)]
    streams = []
    for index in range(calls):
        connection = Connection(edge)
        connection.connection_made(CountingTransport())  # type: ignore[arg-type]
        connection.data_received(
            b"GET /telephone/handler HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        stream_sid, call_sid = f"MZ{index:032d}", f"CA{index:032d}"
        connection.data_received(client_frame(json.dumps({"event": "connected", "protocol": "Call"})))
        token = make_token(call_sid)
        connection.data_received(client_frame(start_message(stream_sid, call_sid, {"token": token})))
        streams.append((connection, stream_sid))
    await asyncio.sleep(0.2)
    if len(state.calls) != calls:
        raise RuntimeError(f"{len(state.calls)} of {calls} calls opened")
    # Calls are staggered by whole frames so that their turns do not all end in the same 20 ms.
    frames = [[media_frame(sid, k, payloads[(k + 7 * i) % len(payloads)]) for k in range(len(payloads))]
              for i, (_, sid) in enumerate(streams)]
    process_cpu = time.process_time()  # from here: the calls' media only (not the model's loading)
    profiler = cProfile.Profile() if profile else None
    loop_cpu, started = time.thread_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    slots = [list(zip(streams[slot::SLOTS], frames[slot::SLOTS], strict=True)) for slot in range(SLOTS)]
    late: list[float] = []  # per pacer step: how long after its time it ran
    for k in range(len(payloads)):
        for slot, group in enumerate(slots):
            late.append(time.perf_counter() - (started + (k + slot / SLOTS) * 0.02))
            for (connection, _), messages in group:
                connection.data_received(messages[k])
            await asyncio.sleep(max(0.0, started + (k + (slot + 1) / SLOTS) * 0.02 - time.perf_counter()))
    if profiler is not None:
        profiler.disable()
    loop_cpu = time.thread_time() - loop_cpu
    model_cpu = model_seconds(state, "callbridge_end_of_turn_cpu_seconds_total")
    # the other threads: the VAD's inference thread (and the end-of-turn model's, counted apart)
    vad_cpu = time.process_time() - process_cpu - loop_cpu - model_cpu
    messages = len(payloads) * calls
    replies = sum(call.stats.turns for call in state.calls.values())
    result = {
        "calls": calls, "messages": messages, "seconds": round(time.perf_counter() - started, 1),
        "loop_us_per_message": round(1e6 * loop_cpu / messages, 1),
        "process_us_per_message": round(1e6 * (loop_cpu + vad_cpu) / messages, 1),
        # in the inference thread (with --vad-on-loop there is none: the loop's figure includes inference)
        "vad_us_per_window": None if vad_on_loop else round(1e6 * vad_cpu / max(1, state.vad.windows), 1),
        "vad_windows_per_batch": round(state.vad.windows / max(1, state.vad.batches), 1),
        "turns_answered": replies, "reply_bytes": sum(c.transport.written for c, _ in streams),
        "turn_latency_ms_p50_p95": ms_percentiles(latencies), "turn_latencies": len(latencies),
        "pacer_late_ms_p50_p99_max": "{:.1f} / {:.1f} / {:.1f}".format(*(1000 * np.percentile(late, [50, 99, 100]))),
    }
    if end_of_turn != "silence":
        questions = {answer: model_seconds(state, "callbridge_end_of_turn_questions_total", {"answer": answer})
                     for answer in ("complete", "incomplete", "stale")}
        result["end_of_turn_questions"] = questions
        result["end_of_turn_cpu_ms_per_call_second"] = round(1000 * model_cpu / (calls * len(payloads) * 0.02), 2)
        result["end_of_turn_cpu_ms_per_question_computed"] = round(
            1000 * model_cpu / max(1, questions["complete"] + questions["incomplete"]), 1)
        result["cores_busy_end_of_turn"] = round(model_cpu / (time.perf_counter() - started), 2)
    if waits is not None:
        result["vad_answer_ms_p50_p95_deciding"] = ms_percentiles(waits[0])
        result["vad_answer_ms_p50_p95_others"] = ms_percentiles(waits[1])
    for call in list(state.calls.values()):
        await state.end_call(call)
    await state.vad.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1], help="source tree to measure")
    parser.add_argument("--calls", type=int, default=80, help="streams in this one process (default 80: one of "
                        "two workers at 160 calls)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions (slows it down)")
    parser.add_argument("--vad-on-loop", action="store_true", help="run VAD inference on the event loop "
                        "(VAD_THREAD=loop) instead of in its thread")
    parser.add_argument("--end-of-turn", choices=["silence", "model"], default="silence",
                        help="END_OF_TURN (model: Smart Turn asked at 200 ms of silence, on its own thread)")
    parser.add_argument("--ask-every-ms", type=int, default=0, help="END_OF_TURN_ASK_EVERY_MS (with --end-of-turn "
                        "model: ask again every so many ms of the same pause; 0: once)")
    parser.add_argument("--answers", action="store_true", help="also time each window from submission to its "
                        "answer, for windows that started speech or ended a turn and for the rest (costs CPU)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    import uvloop

    result = uvloop.run(run(args.calls, args.seconds, args.profile, args.answers, args.vad_on_loop,
                            args.end_of_turn, args.ask_every_ms))
    print(json.dumps({"tree": str(args.tree), "end_of_turn": args.end_of_turn, "ask_every_ms": args.ask_every_ms,
                      **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
