"""Clients that speak the service's real wire protocols: the browser µ-law socket and raw Twilio frames."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callbridge.codec import ulaw_decode, ulaw_encode

FRAME = 160


def media_event(samples: np.ndarray) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(samples)).decode()}})


@dataclass
class BrowserResult:
    audio: list[np.ndarray] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    close_code: int | None = None

    @property
    def logs(self) -> list[str]:
        return [m["data"] for m in self.messages if m.get("type") == "log"]

    @property
    def reply(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


async def browser_call(base_url: str, call_id: str, audio: np.ndarray, *, until: str = "playback_finished",
                       timeout: float = 20.0, pace: float = 0.0, drop: bool = False, origin: str | None = None
                       ) -> BrowserResult:
    """One call over /websocket/offer: send `audio` (frames every `pace` s), collect until log `until`,
    then send `stop` (or, with `drop`, just close the socket as a crashed page would). `origin`: the Origin
    header a browser page would send (none by default, as a non-browser client)."""
    result = BrowserResult()
    url = base_url.replace("http://", "ws://") + "/websocket/offer"
    async with connect(url, max_size=None, origin=origin) as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": call_id}))

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("event") == "media":
                    result.audio.append(ulaw_decode(base64.b64decode(message["media"]["payload"])))
                elif "event" in message:
                    result.events.append(message["event"])
                else:
                    result.messages.append(message)
                    if message.get("type") == "log" and message.get("data") == until:
                        return

        receiver = asyncio.create_task(receive())
        try:
            for start in range(0, len(audio), FRAME):
                await ws.send(media_event(audio[start : start + FRAME]))
                if pace:
                    await asyncio.sleep(pace)
            with contextlib.suppress(TimeoutError):  # `until` never came: the caller hangs up anyway
                await asyncio.wait_for(receiver, timeout)
            if drop:
                await ws.close()
                return result
            await ws.send(json.dumps({"event": "stop"}))
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            receiver.cancel()
        result.close_code = ws.close_code
    return result


async def raw_exchange(url: str, messages: list[str | bytes], *, timeout: float = 5.0) -> tuple[list[str], int | None]:
    """Send messages on a fresh socket, then collect everything until the server closes it."""
    received: list[str] = []
    async with connect(url, max_size=None) as ws:
        try:
            for message in messages:
                await ws.send(message)
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    received.append(raw if isinstance(raw, str) else "<binary>")
        except ConnectionClosed:
            pass
        return received, ws.close_code
