"""Service-level behaviour on a real server: probes, settings errors, signals, inputs and outputs over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.integration.clients import browser_call
from tests.integration.conftest import ROOT, Server
from tests.processes import free_port
from tests.speech import silence, speech

RATE = 8000


def test_probes(echo_server):
    assert httpx.get(echo_server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(echo_server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "callbridge", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_invalid_settings_stop_startup_with_the_variable_named():
    result = run_cli(PORT="not-a-port")
    assert result.returncode == 2
    assert "PORT" in result.stderr and "not-a-port" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(VAD_EXIT_THRESHOLD="0.9")
    assert result.returncode == 2 and "VAD_EXIT_THRESHOLD" in result.stderr
    result = run_cli(BOT="no_such_module:thing")
    assert result.returncode == 2 and "BOT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("value", "says"), [
    ("stun:stun.example.com:3478", "must be JSON"),  # a URL, not the JSON list
    ('[{"urls": "http://turn.example.com"}]', "'http://turn.example.com' is not a stun:"),
    ('[{"urls": ["turn:ok.example.com", "ftp://bad"]}]', "'ftp://bad'"),
])
def test_a_bad_ice_servers_value_is_refused_at_start_up_in_one_line(value, says):
    result = run_cli(ICE_SERVERS=value)
    assert result.returncode == 2
    assert "ICE_SERVERS" in result.stderr and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 2


def test_the_softphone_gets_the_ice_servers_of_the_service(server_factory):
    turn = {"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"}
    server = server_factory(ice_servers=json.dumps([turn]))
    assert httpx.get(server.url + "/webrtc/config").json() == {"iceServers": [turn]}
    script = httpx.get(server.url + "/static/softphone.js").text
    assert 'fetch("/webrtc/config")' in script and "isSecureContext" in script


def test_help_documents_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "call" in result.stdout
    assert "--dtmf" in run_cli("call", "--help").stdout


def test_sigterm_and_sigint_shut_down_cleanly(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = Server({}, tmp_path / f"{sig.name}.log")
        server.process.send_signal(sig)
        assert server.process.wait(20) == 0
        server.log.close()
        assert f"{sig.name} received" in server.logs()


async def test_input_hook_and_sse_updates(server_factory):
    await check_input_hook_and_updates(server_factory(bot="tests.sample_bots:labeller"), "sse-1")


async def check_input_hook_and_updates(server: Server, call_id: str) -> None:
    """set_input over POST /input_hook and outputs over GET /updates for a live browser call (every request
    on a new connection: with several workers, any of them may answer)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.post("/input_hook", json={"webrtc_id": "nobody", "label": "x"})).status_code == 404
        malformed = await client.post("/input_hook", content=b"not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 422
        assert (await client.post("/input_hook", json={"label": "no id"})).status_code == 422
        assert (await client.get("/updates", params={"webrtc_id": "nobody"})).status_code == 404
        assert (await client.get("/updates")).status_code == 422

        said = speech("Hello, please label this turn.", RATE)
        utterance = np.concatenate([said, silence(1.0, RATE)])
        call = asyncio.create_task(browser_call(server.url, call_id, np.concatenate([silence(1.0, RATE), utterance,
                                                                                      utterance]),
                                                pace=0.02, until="never", timeout=12))
        await asyncio.sleep(0.5)
        response = await client.post("/input_hook", json={"webrtc_id": call_id, "label": "first"})
        assert response.status_code == 200
        outputs: list = []
        async with client.stream("GET", "/updates", params={"webrtc_id": call_id}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    outputs.append(json.loads(line[6:]))
                    if len(outputs) == 1:
                        await client.post("/input_hook", json={"webrtc_id": call_id, "label": "second"})
                    if len(outputs) == 2:
                        break
        result = await call
    assert [o[0]["label"] for o in outputs] == ["first", "second"]
    assert all(abs(o[0]["seconds"] - (len(said) / RATE + 0.2)) < 0.2 for o in outputs)
    fetches = [m for m in result.messages if m["type"] == "fetch_output"]
    assert [m["data"][0]["label"] for m in fetches] == ["first", "second"]


def test_call_simulator_cli_records_the_reply(echo_server, tmp_path):
    from tests.speech import peak_correlation, read_wav, write_wav

    said = speech("Testing the call simulator from the command line.", RATE)
    wav, out = tmp_path / "said.wav", tmp_path / "reply.wav"
    write_wav(wav, said, RATE)
    result = run_cli("call", str(wav), "--url", echo_server.url, "--out", str(out), "--dtmf", "1#")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "end of speech -> first reply audio" in result.stdout
    # The echo's end mark came back (the other marks are its resume points, every 0.5 s).
    assert "(1 ending a reply)" in result.stdout and "closed with code 1000" in result.stdout
    assert peak_correlation(read_wav(out), said) > 0.9


def test_call_simulator_cli_reports_an_unreachable_server(tmp_path):
    from tests.speech import write_wav

    write_wav(tmp_path / "x.wav", silence(0.5, RATE), RATE)
    result = run_cli("call", str(tmp_path / "x.wav"), "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "cannot reach" in result.stdout and "Traceback" not in result.stderr


def test_your_own_bot_from_a_folder_outside_the_checkout(tmp_path, server_factory):
    """A bot in its own folder: BOT_PATH finds it; without it the error says what to set."""
    folder = tmp_path / "mybots"
    folder.mkdir()
    (folder / "parrot.py").write_text(
        "from callbridge.bots.base import Audio, Bot\n\n"
        "class Parrot(Bot):\n"
        "    input_rate = 8000\n\n"
        "    async def reply(self, turn):\n"
        "        yield Audio(turn.audio[::-1], turn.sample_rate)\n"
    )
    result = run_cli(BOT="parrot:Parrot")
    assert result.returncode == 2 and "set BOT_PATH" in result.stderr and "Traceback" not in result.stderr
    server = server_factory(bot="parrot:Parrot", bot_path=str(folder))
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert "bot=parrot:Parrot" in server.logs()


def test_sigterm_while_starting_stops_cleanly(tmp_path):
    """A process stopped before it is ready (a supervisor or orchestrator stopping it mid-start) exits 0."""
    process = subprocess.Popen([sys.executable, "-m", "callbridge"], cwd=tmp_path,
                               env={**os.environ, "PORT": str(free_port()), "BOT": "echo"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # importing, long before the event loop takes over the signals (or, on a fast machine, draining)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
