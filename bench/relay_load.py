"""ConversationRelay sessions held at once, and the time to their first token, with the offline dialog script.

Starts a real `python -m callbridge` (BOT=assistant, no LLM: the shipped dialog file answers) and, per level,
opens that many ConversationRelay sessions as Twilio would (the webhook POSTed, the socket opened, `setup` with
the TwiML's parameters), all held at once; each then sends `--turns` final prompts, `--gap` seconds apart
(jittered, so the sessions do not speak in lockstep), and times each reply from the prompt sent to its first
`text` token (TTFT) and to its `last` token. The client runs on the same machine: on 2 cores it competes with
the server for CPU, so the figures are a floor on what the server alone would do.

    .venv/bin/python bench/relay_load.py [--levels 100,400,800] [--turns 5] [--gap 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import Server, ServerSpec, cpu_seconds, status

QUESTIONS = ("What time do you open tomorrow?", "Where are you located?", "How much is a cleaning?",
             "Do you take insurance?", "Can I book an appointment?")


async def session(client: httpx.AsyncClient, base: str, turns: int, gap: float, opened: asyncio.Barrier,
                  ttft: list[float], whole: list[float]) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    form = {"CallSid": call_sid, "From": "+15550100001", "To": "+15550100002"}
    answer = await client.post(base + "/relay/incoming", data=form)
    relay = ET.fromstring(answer.text).find("./Connect/ConversationRelay")
    assert relay is not None, answer.text
    parameters = {p.get("name", ""): p.get("value", "") for p in relay.findall("Parameter")}
    async with connect(relay.get("url", ""), open_timeout=60, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "setup", "sessionId": "VX" + secrets.token_hex(16), "callSid": call_sid,
                                  "from": form["From"], "to": form["To"], "customParameters": parameters}))
        await opened.wait()  # every session is open before any speaks
        for turn in range(turns):
            await asyncio.sleep(gap * random.uniform(0.5, 1.5))
            await ws.send(json.dumps({"type": "prompt", "voicePrompt": QUESTIONS[turn % len(QUESTIONS)],
                                      "lang": "en-US", "last": True}))
            asked, first = time.monotonic(), None
            while True:
                message = json.loads(await ws.recv())
                if message["type"] != "text":
                    continue
                if message["token"] and first is None:
                    first = time.monotonic()
                    ttft.append(first - asked)
                if message["last"]:
                    whole.append(time.monotonic() - asked)
                    break


async def run_level(base: str, level: int, turns: int, gap: float) -> tuple[list[float], list[float], float]:
    ttft: list[float] = []
    whole: list[float] = []
    opened = asyncio.Barrier(level)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.monotonic()
        await asyncio.gather(*(session(client, base, turns, gap, opened, ttft, whole) for _ in range(level)))
    return ttft, whole, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100,400,800")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/relay_bench"))
    args = parser.parse_args()
    env = {"BOT": "assistant", "HOST": "127.0.0.1", "PORT": "{port}", "LOG_LEVEL": "WARNING",
           "CONCURRENCY_LIMIT": "5000", "PUBLIC_URL": "", "TWILIO_AUTH_TOKEN": ""}
    spec = ServerSpec("callbridge-relay", (sys.executable, "-m", "callbridge"), env, "/readyz", "gap", False, 0)
    server = Server(spec, args.out / "server.log")
    print("| sessions held | prompts | TTFT p50 | TTFT p95 | reply p95 | server CPU per session-second | RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for level in (int(n) for n in args.levels.split(",")):
            cpu0 = cpu_seconds(server.pid)
            ttft, whole, seconds = asyncio.run(run_level(server.url, level, args.turns, args.gap))
            cpu = cpu_seconds(server.pid) - cpu0
            rss = status(server.pid)["rss"] / 2**20
            print(f"| {level} | {len(ttft)} | {percentile(ttft, 50) * 1000:.1f} ms | "
                  f"{percentile(ttft, 95) * 1000:.1f} ms | {percentile(whole, 95) * 1000:.1f} ms | "
                  f"{cpu / (level * seconds) * 1000:.2f} ms | {rss:.0f} MB |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
