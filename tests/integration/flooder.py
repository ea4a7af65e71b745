"""A client that floods browser sockets with 48,000-byte µ-law payloads (6 s of audio each) as fast as they go,
opening a new socket whenever the server closes one.

Run in its own process (`python -m tests.integration.flooder URL SECONDS NAME...`) so that its sending does not
starve the test's own event loop, where a healthy caller paces its audio. Prints one JSON line per flooding
client: the sockets it opened, the payloads it sent, how each socket was closed and the errors it was told.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections import Counter

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callbridge.codec import ulaw_encode
from tests.speech import speech

PAYLOAD_BYTES = 48000


def payload() -> str:
    """Speech, so that the flooded calls' VAD and turns have real work, not silence."""
    said = speech("Once upon a time, in a small village by the sea, there lived an old fisherman.")
    audio = np.tile(said, PAYLOAD_BYTES // len(said) + 1)[:PAYLOAD_BYTES]
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(audio)).decode()}})


async def flood_once(url: str, socket_id: str, deadline: float, message: str, report: dict) -> None:
    async with connect(url + "/websocket/offer", max_size=None) as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": socket_id}))

        async def receive() -> None:
            async for raw in ws:
                received = json.loads(raw)
                if received.get("type") == "error":
                    report["errors"].append(received["data"])

        receiver = asyncio.create_task(receive())
        try:
            while time.monotonic() < deadline:
                await ws.send(message)
                report["sent"] += 1
            await ws.send(json.dumps({"event": "stop"}))
            await asyncio.wait_for(ws.wait_closed(), 10)
        except ConnectionClosed:
            pass
        finally:
            await asyncio.wait_for(asyncio.gather(receiver, return_exceptions=True), 10)
        report["close_codes"][str(ws.close_code)] += 1


async def flood(url: str, name: str, seconds: float, message: str) -> dict:
    report: dict = {"name": name, "sockets": 0, "sent": 0, "close_codes": Counter(), "errors": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        report["sockets"] += 1
        await flood_once(url, f"{name}-{report['sockets']}", deadline, message, report)
    return report


async def main(url: str, seconds: float, names: list[str]) -> None:
    message = payload()
    for report in await asyncio.gather(*(flood(url, name, seconds, message) for name in names)):
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].replace("http://", "ws://"), float(sys.argv[2]), sys.argv[3:]))
