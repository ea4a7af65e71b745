"""Operating the service: graceful drain on SIGTERM, Prometheus metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForReply, webhook
from tests.integration.clients import raw_exchange
from tests.integration.conftest import Server
from tests.speech import peak_correlation, speech

RATE = 8000
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_sigterm_drains_calls_in_progress(tmp_path):
    server = Server({"SHUTDOWN_GRACE_SECONDS": "20", "LOG_FORMAT": "json"}, tmp_path / "drain.log")
    try:
        said = speech(STORY, RATE)
        caller = SimulatedCaller(server.url, [Speak(said), WaitForReply("heard", timeout=20)])
        call = asyncio.create_task(caller.run())
        while not caller.report.reply_starts:  # the bot has started answering
            await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        assert status(server.url + "/readyz") == 503
        assert status(server.url + "/healthz") == 200
        try:
            webhook(server.url)
            raise AssertionError("a new call was accepted while draining")
        except RuntimeError as refused:
            assert "Reject" in str(refused)
        received, code = await raw_exchange(server.url.replace("http", "ws") + "/websocket/offer",
                                            [json.dumps({"event": "start", "websocket_id": "late"})])
        assert json.loads(received[0])["meta"]["error"] == "service_unavailable" and code == 1013
        report = await call
        # The call in progress finished its reply: all of it was heard, its mark echoed.
        assert peak_correlation(report.heard_audio, said) > 0.9
        assert report.marks_echoed == report.marks_received and report.marks_echoed
        assert server.process.wait(20) == 0
        assert time.monotonic() - signalled < 20
    finally:
        server.stop()
    events = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    kinds = [e.get("event") for e in events]
    assert "drain" in kinds and "call_start" in kinds and "call_end" in kinds and "turn" in kinds
    end = next(e for e in events if e.get("event") == "call_end")
    assert end["call_id"] == caller.stream_sid and end["turns"] == 1


async def test_after_the_grace_period_the_bot_says_goodbye_and_the_call_ends(tmp_path):
    server = Server({"SHUTDOWN_GRACE_SECONDS": "1", "BOT": "tests.sample_bots:PoliteEcho"}, tmp_path / "grace.log")
    try:
        caller = SimulatedCaller(server.url, [Pause(20.0)], hangup_when_done=False)
        call = asyncio.create_task(caller.run())
        await asyncio.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        report = await asyncio.wait_for(call, 15)
        assert server.process.wait(15) == 0
    finally:
        server.stop()
    assert abs(report.reply_seconds - 0.4) < 0.05, "the goodbye was heard in full"
    assert report.close_code == 1000, "then the server hung up"


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_move_during_a_call(server_factory):
    server = server_factory(concurrency_limit=1, log_format="json")
    async with httpx.AsyncClient(base_url=server.url) as client:
        before = metric_values((await client.get("/metrics")).text)
        said = speech("Counting the calls, turns and barge ins.", RATE)
        report = await SimulatedCaller(server.url, [Speak(said), WaitForReply("heard")]).run()
        assert report.reply_starts
        holder = asyncio.create_task(SimulatedCaller(server.url, [Pause(2.0)]).run())
        await asyncio.sleep(1.0)
        with_call = metric_values((await client.get("/metrics")).text)
        with pytest.raises(RuntimeError, match="rejected"):
            webhook(server.url)  # over the limit of 1
        await holder
        after = metric_values((await client.get("/metrics")).text)

    def delta(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    twilio = (("transport", "twilio"),)
    assert delta("callbridge_calls_total", twilio) == 2
    assert with_call[("callbridge_calls_in_progress", twilio)] == 1
    assert after[("callbridge_calls_in_progress", twilio)] == 0
    assert delta("callbridge_turn_latency_seconds_count") == 1
    latency = delta("callbridge_turn_latency_seconds_sum")
    assert 0.4 < latency < 2.0
    assert delta("callbridge_vad_inference_seconds_count") > 50
    assert delta("callbridge_concurrency_rejections_total") == 1
    assert np.isfinite(after[("callbridge_vad_inference_seconds_sum", ())])
