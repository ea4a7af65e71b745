"""The assistant bot's turn latency, stage by stage: end of the caller's speech -> first answer audio.

Starts a real `python -m callbridge` (BOT=assistant) per stack and drives calls over the browser µ-law socket
(`/websocket/offer`) in real time: silence until the short greeting has played, one question spoken by
espeak-ng at 8 kHz, silence until the answer's first audio and the turn's `timings` log arrive, hang up. Each
call slot makes `--turns` such calls one after another; `--levels` concurrent slots.

Per turn: e2e (last question sample sent -> first loud answer frame received), pause (-> `pause_detected`
received), the bot's own stage timings (stt, llm_first_token, tts_first_audio, from the socket's log), and
callbridge's share = e2e - pause - stt - llm_first_token - tts_first_audio.

Stacks: `local` (Whisper tiny.en + dialog script + espeak-ng), `openai` (every stage an OpenAI-compatible fake
with fixed delays, served from a thread of this process), `local-llm` (Whisper + a fake LLM + espeak-ng).

    .venv/bin/python bench/assistant_latency.py [--stacks local,openai,local-llm] [--levels 1,8] [--turns 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from websockets.asyncio.client import connect

from bench.servers import Server, ServerSpec, cpu_seconds, machine_busy_seconds, steal_seconds
from callbridge.codec import ulaw_decode, ulaw_encode
from tests.speech import speech

ROOT = Path(__file__).resolve().parents[1]
FRAME = 160  # 20 ms at 8 kHz
FRAME_S = 0.02
LOUD_PEAK = 200  # a decoded µ-law frame with a sample above this is audio, not silence
QUIET_AFTER_GREETING = 0.5
TURN_TIMEOUT = 20.0
QUESTIONS = ("What time do you open tomorrow morning?", "Where are you located?",
             "How much does a cleaning cost?", "Do you treat children?")

# The fake provider's fixed delays (seconds).
STT_DELAY = 0.150
LLM_FIRST_TOKEN = 0.200
TTS_DELAY = 0.100
LLM_REPLY = ("We open at 8 in the morning. See", " you then.")
PCM_RATE = 24000


# -- a fake OpenAI-compatible provider with fixed delays, on its own thread and loop -----------------------

def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": "bench",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


async def _chat(request: web.Request) -> web.StreamResponse:
    await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write(_chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(LLM_FIRST_TOKEN)
        await response.write(_chunk({"content": LLM_REPLY[0]}))  # a whole first sentence: nothing waits on tokens
        await asyncio.sleep(0.05)
        await response.write(_chunk({"content": LLM_REPLY[1]}))
        await response.write(_chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


async def _transcription(request: web.Request) -> web.Response:
    await request.post()
    await asyncio.sleep(STT_DELAY)
    return web.json_response({"text": QUESTIONS[0]})


async def _speech(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    await asyncio.sleep(TTS_DELAY)
    seconds = 0.1 * max(1, len(body["input"].split()))
    t = np.arange(int(seconds * PCM_RATE)) / PCM_RATE
    pcm = (6000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    with contextlib.suppress(ConnectionResetError):  # the bench hangs up once the first audio is heard
        await response.prepare(request)
        for start in range(0, len(pcm), 4800):
            await response.write(pcm[start : start + 4800])
        await response.write_eof()
    return response


class FakeProvider:
    """OpenAI's wire formats (streamed chat, transcription JSON, raw 24 kHz PCM speech) with fixed delays."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _chat)
        app.router.add_post("/v1/audio/transcriptions", _transcription)
        app.router.add_post("/v1/audio/speech", _speech)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def stack_env(stack: str, fake: str) -> dict[str, str]:
    llm = {"LLM_BASE_URL": fake, "LLM_MODEL": "bench", "LLM_API_KEY": "bench"}
    if stack == "local":
        return {}
    if stack == "local-llm":
        return llm
    if stack == "openai":
        return {**llm, "STT_BASE_URL": fake, "STT_API_KEY": "bench", "TTS_BASE_URL": fake, "TTS_API_KEY": "bench"}
    raise SystemExit(f"unknown stack {stack!r}")


# -- one call: greeting, one question, its answer's first audio --------------------------------------------

@dataclass
class TurnResult:
    stack: str
    level: int
    question: str
    heard: str = ""
    e2e: float | None = None
    pause: float | None = None
    stt: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    share: float | None = None
    #: e2e - PAUSE_MS - the fixed delays of the faked providers - the measured time of the local stages.
    over: float | None = None
    error: str = ""


def media_event(samples: np.ndarray) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(samples)).decode()}})


FAKED = {"local": {}, "local-llm": {"llm_first_token": LLM_FIRST_TOKEN},
         "openai": {"stt": STT_DELAY, "llm_first_token": LLM_FIRST_TOKEN, "tts_first_audio": TTS_DELAY}}


async def one_call(url: str, call_id: str, question: np.ndarray, result: TurnResult, pause_ms: int) -> None:
    state: dict[str, Any] = {"last_loud": None, "speech_end": None, "first": None, "pause": None, "timings": None}

    async def receive(ws: Any) -> None:
        async for raw in ws:
            now = time.perf_counter()
            message = json.loads(raw)
            if message.get("event") == "media":
                samples = ulaw_decode(base64.b64decode(message["media"]["payload"]))
                if samples.size and int(np.abs(samples.astype(np.int32)).max()) > LOUD_PEAK:
                    state["last_loud"] = now
                    if state["speech_end"] is not None and state["first"] is None:
                        state["first"] = now
            elif message.get("type") == "log" and state["speech_end"] is not None:
                data = message.get("data")
                if data == "pause_detected" and state["pause"] is None:
                    state["pause"] = now
                elif isinstance(data, dict) and "timings" in data and state["timings"] is None:
                    state["timings"] = data["timings"]
            elif message.get("type") == "fetch_output":
                for item in message.get("data") or []:
                    if isinstance(item, dict) and item.get("role") == "user":
                        result.heard = item.get("text", "")

    silence = np.zeros(FRAME, np.int16)
    frames = [question[i : i + FRAME] for i in range(0, len(question), FRAME)]
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": call_id}))
        receiver = asyncio.create_task(receive(ws))
        t0 = time.perf_counter()
        k = 0
        phase, queue = "greeting", iter(())
        try:
            while True:
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.perf_counter()))  # a frame goes once captured
                now = time.perf_counter()
                if phase == "greeting":
                    heard = state["last_loud"]
                    if (heard is not None and now - heard > QUIET_AFTER_GREETING) or now - t0 > 15:
                        phase, queue = "question", iter(frames)
                if phase == "question":
                    frame = next(queue, None)
                    if frame is None:
                        phase = "answer"
                    else:
                        await ws.send(media_event(frame))
                        if len(frame) and frame is frames[-1]:
                            state["speech_end"] = time.perf_counter()
                        continue
                answered = state["first"] is not None and state["timings"] is not None
                if phase == "answer" and (answered or now - state["speech_end"] > TURN_TIMEOUT):
                    break
                if receiver.done():
                    break
                await ws.send(media_event(silence))
            await ws.send(json.dumps({"event": "stop"}))
        finally:
            receiver.cancel()
    end = state["speech_end"]
    if end is None or state["first"] is None:
        result.error = "no answer"
        return
    result.e2e = state["first"] - end
    result.pause = None if state["pause"] is None else state["pause"] - end
    if state["timings"] is None:  # a stage failed (e.g. STT_TIMEOUT_SECONDS): the caller heard the apology
        result.error = f"apology after {result.e2e:.1f} s (no timings: a stage failed or timed out)"
        return
    timings = state["timings"]
    result.stt, result.llm_first_token = timings.get("stt"), timings.get("llm_first_token")
    result.tts_first_audio = timings.get("tts_first_audio")
    parts = [result.pause, result.stt, result.llm_first_token or 0.0, result.tts_first_audio]
    if None not in parts:
        result.share = result.e2e - sum(parts)  # type: ignore[arg-type]
        faked = FAKED[result.stack]
        stages = sum(faked.get(name, getattr(result, name) or 0.0) for name in ("stt", "llm_first_token",
                                                                                "tts_first_audio"))
        result.over = result.e2e - pause_ms / 1000 - stages


async def run_level(url: str, stack: str, level: int, turns: int, audio: dict[str, np.ndarray],
                    pause_ms: int) -> list[TurnResult]:
    results: list[TurnResult] = []

    async def slot(index: int) -> None:
        await asyncio.sleep(index * 0.3)  # staggered: the turns of different calls do not all end at once
        for turn in range(turns):
            text = QUESTIONS[(index + turn) % len(QUESTIONS)]
            result = TurnResult(stack, level, text)
            results.append(result)
            try:
                await asyncio.wait_for(one_call(url, f"bench-{stack}-{level}-{index}-{turn}", audio[text], result,
                                                pause_ms),
                                       TURN_TIMEOUT + 20)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(slot(i) for i in range(level)))
    return results


# -- report --------------------------------------------------------------------------------------------------

COLUMNS = ("e2e", "pause", "stt", "llm_first_token", "tts_first_audio", "share", "over")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def table(rows: list[TurnResult]) -> list[str]:
    lines = ["| stack | N | turns | " + " | ".join(f"{c} p50 / p95 (ms)" for c in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    groups: dict[tuple[str, int], list[TurnResult]] = {}
    for row in rows:
        groups.setdefault((row.stack, row.level), []).append(row)
    for (stack, level), group in groups.items():
        ok = [r for r in group if r.e2e is not None and not r.error]
        cells = []
        for column in COLUMNS:
            values = [getattr(r, column) for r in ok if getattr(r, column) is not None]
            cells.append(f"{pct(values, 50) * 1000:.0f} / {pct(values, 95) * 1000:.0f}" if values else "-")
        failed = len(group) - len(ok)
        lines.append(f"| {stack} | {level} | {len(ok)}{f' ({failed} failed)' if failed else ''} | "
                     + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default="local,local-llm,openai")
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--turns", type=int, default=5, help="calls (one question each) per call slot")
    parser.add_argument("--pause-ms", type=int, default=512)
    parser.add_argument("--end-of-turn", choices=("silence", "model"), default="silence", help="END_OF_TURN")
    parser.add_argument("--ask-ms", type=int, default=150, help="END_OF_TURN_ASK_MS: when transcription starts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/work/assistant")
    parser.add_argument("--report", type=Path, help="only print the table of an earlier run's assistant.json")
    args = parser.parse_args()
    if args.report:
        saved = [TurnResult(**row) for row in json.loads(args.report.read_text())["rows"]]
        for row in saved:
            if row.e2e is not None and row.stt is None and not row.error:
                row.error = "apology (no timings)"
        print("\n".join(table(saved)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    audio = {q: np.concatenate([speech(q, 8000), np.zeros(0, np.int16)]) for q in QUESTIONS}
    fake = FakeProvider()
    rows: list[TurnResult] = []
    machine: dict[str, float] = {}
    busy0, steal0, wall0 = machine_busy_seconds(), steal_seconds(), time.monotonic()
    try:
        for stack in args.stacks.split(","):
            env = {"BOT": "assistant", "HOST": "127.0.0.1", "PORT": "{port}", "LOG_LEVEL": "INFO",
                   "GREETING": "Hello.", "PAUSE_MS": str(args.pause_ms), "CONCURRENCY_LIMIT": "50",
                   "END_OF_TURN": args.end_of_turn, "END_OF_TURN_ASK_MS": str(args.ask_ms),
                   "EVENT_LOOP": os.environ.get("EVENT_LOOP", "uvloop"),
                   **stack_env(stack, fake.base_url)}
            spec = ServerSpec(stack, (sys.executable, "-m", "callbridge"), env, "/readyz", "gap", True,
                              args.pause_ms)
            server = Server(spec, args.out / f"{stack}.log")
            url = server.url.replace("http://", "ws://") + "/websocket/offer"
            try:
                for level in (int(n) for n in args.levels.split(",")):
                    cpu0, started = cpu_seconds(server.pid), time.monotonic()
                    results = asyncio.run(run_level(url, stack, level, args.turns, audio, args.pause_ms))
                    cpu = cpu_seconds(server.pid) - cpu0
                    rows += results
                    print(f"{stack} N={level}: {time.monotonic() - started:.0f} s, server CPU {cpu:.1f} s", flush=True)
                    print("\n".join(table(results)), flush=True)
                    machine[f"{stack} N={level} server cpu s"] = round(cpu, 1)
            finally:
                server.stop()
    finally:
        fake.stop()
    wall = time.monotonic() - wall0
    machine.update(wall_s=round(wall, 1), busy_cores=round((machine_busy_seconds() - busy0) / wall, 2),
                   steal_cores=round((steal_seconds() - steal0) / wall, 3))
    (args.out / "assistant.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "machine": machine,
                                                         "date": datetime.datetime.now().isoformat(timespec="seconds"),
                                                         "cpus": os.cpu_count(), "python": platform.python_version()},
                                                        indent=1))
    print("\n".join(table(rows)))
    print(json.dumps(machine))
    for row in rows:
        misheard = row.stack != "openai" and row.heard.lower().rstrip("?.") != row.question.lower().rstrip("?.")
        if row.error or misheard:
            print(f"  {row.stack} N={row.level}: {row.question!r} heard {row.heard!r} {row.error}")


if __name__ == "__main__":
    main()
