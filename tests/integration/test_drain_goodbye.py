"""The goodbye the drain makes the bot say stops the reply in progress, but it is not a barge-in: nobody spoke
over the bot, so neither the logs, the client, nor the metrics count one."""

from __future__ import annotations

import asyncio
import base64
import json
import signal

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from callbridge.codec import ulaw_decode
from tests.integration.clients import media_event
from tests.integration.conftest import Server
from tests.integration.drain_bots import GOODBYE_SECONDS
from tests.speech import silence, speech

RATE = 8000
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."


def barge_ins_counted(metrics_text: str) -> float:
    family = next(f for f in text_string_to_metric_families(metrics_text) if f.name == "callbridge_barge_ins")
    return sum(sample.value for sample in family.samples if sample.name == "callbridge_barge_ins_total")


async def test_the_drains_goodbye_is_not_counted_as_a_barge_in(tmp_path):
    server = Server({"SHUTDOWN_GRACE_SECONDS": "1", "LOG_FORMAT": "json",
                     "BOT": "tests.integration.drain_bots:EchoWithLongGoodbye"}, tmp_path / "goodbye.log")
    said = np.concatenate([speech(STORY, RATE), silence(1.0, RATE)])
    logs: list[str] = []
    events: list[str] = []
    after_clear: list[np.ndarray] = []
    counted_during_goodbye = None
    try:
        async with connect(server.url.replace("http", "ws") + "/websocket/offer") as ws, \
                httpx.AsyncClient(base_url=server.url) as http:
            await ws.send(json.dumps({"event": "start", "websocket_id": "drained"}))
            for start in range(0, len(said), 160):
                await ws.send(media_event(said[start : start + 160]))
            async with asyncio.timeout(30):
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "log":
                        logs.append(message["data"])
                        if logs.count("response_starting") == 1 and message["data"] == "response_starting":
                            server.process.send_signal(signal.SIGTERM)  # the echo plays for seconds: drain now
                    elif message.get("event") == "clear":
                        events.append("clear")
                        # The goodbye plays for GOODBYE_SECONDS: the server still answers meanwhile.
                        counted_during_goodbye = barge_ins_counted((await http.get("/metrics")).text)
                    elif message.get("event") == "media" and events:
                        after_clear.append(ulaw_decode(base64.b64decode(message["media"]["payload"])))
        assert ws.close_code == 1000
        assert server.process.wait(20) == 0
    finally:
        server.stop()
    assert events == ["clear"], "the reply in progress was stopped for the goodbye"
    goodbye = np.concatenate(after_clear)
    assert abs(len(goodbye) / RATE - GOODBYE_SECONDS) < 0.1, "then the goodbye was heard in full"
    assert "barge_in" not in logs, logs
    assert counted_during_goodbye == 0
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("event") == "barge_in"]
    (end,) = [line for line in lines if line.get("event") == "call_end"]
    assert end["call_id"] == "drained" and end["barge_ins"] == 0
