"""Calls the bot from the softphone page in a real headless Chromium; run inside a loopback-only namespace.

    unshare -n python -m tests.browser.softphone_session RESULTS.json

Brings up `lo`, starts `python -m callbridge` on 127.0.0.1 with a FastRTC-style bot that echoes the caller's
turn and publishes an additional output, and for each transport launches Chromium with a fake microphone
that plays a spoken sentence once. On the page it clicks Call, sets the bot's input through
`/input_hook`, waits for the echo to be played, saves a screenshot while the bot speaks
(tests/browser/artifacts/), then ends the call (WebRTC: by closing the page; WebSocket: Hang up) and
records what the page and the server saw. test_softphone.py runs this and asserts on RESULTS.json;
nothing here decides pass or fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tests.integration.conftest import Server
from tests.speech import silence, speech, write_wav

if TYPE_CHECKING:
    from playwright.sync_api import Page, Playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
SAID = "Hello, this is a test call, can you hear me?"
BOT = "tests.sample_bots:labeller"
LABEL = "from chromium"
WAV_RATE = 48000
#: Fake capture starts with getUserMedia, before the call is up: lead with silence so no word is lost.
LEAD_SILENCE = 1.5
CALL_TIMEOUT_MS = 30_000


def chromium_flags(wav: Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
    ]


def sample_inbound_level(page: Page) -> float:
    """The remote audio track's level as WebRTC's own stats report it (0..1), or -1 without WebRTC."""
    return page.evaluate("""async () => {
        const pc = window.softphone.pc;
        if (!pc) return -1;
        let level = 0;
        (await pc.getStats()).forEach((s) => {
            if (s.type === "inbound-rtp" && s.kind === "audio") level = Math.max(level, s.audioLevel || 0);
        });
        return level;
    }""")


def run_call(playwright: Playwright, server: Server, wav: Path, transport: str) -> dict[str, Any]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium_flags(wav))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        page.goto(f"{server.url}/?transport={transport}")
        title = page.title()
        page.click("#call")
        page.wait_for_function("window.softphone.stateHistory.includes('listening')", timeout=CALL_TIMEOUT_MS)
        call_id = page.text_content("#call-id")
        input_status = page.evaluate(
            """async ([id, label]) => (await fetch('/input_hook', {method: 'POST',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({webrtc_id: id, label})})).status""", [call_id, LABEL])
        page.wait_for_function("window.softphone.stateHistory.includes('bot')", timeout=CALL_TIMEOUT_MS)
        # Mid-reply: the bot is speaking; sample its level as WebRTC reports it, and keep a picture.
        inbound_levels = []
        for _ in range(8):
            inbound_levels.append(sample_inbound_level(page))
            page.wait_for_timeout(100)
        # The picture shows the bot's voice on its meter (its level, as the page shows it, above -30 dBFS).
        page.wait_for_function("Number(document.getElementById('bot-meter').dataset.db) > -30",
                               timeout=CALL_TIMEOUT_MS)
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / f"softphone-{transport}.png"
        page.screenshot(path=str(screenshot), full_page=True)
        page.wait_for_function(
            "window.softphone.messages.some((m) => m.type === 'log' && m.data === 'playback_finished')",
            timeout=CALL_TIMEOUT_MS,
        )
        page.wait_for_timeout(300)
        seen = page.evaluate("""() => ({
            states: window.softphone.stateHistory,
            messages: window.softphone.messages,
            peakBotDb: window.softphone.peakBotDb,
            peakMicDb: window.softphone.peakMicDb,
            turnStateText: document.getElementById('turn-state').textContent,
            logTypes: [...document.querySelectorAll('#log li b')].map((b) => b.textContent),
            outputsShown: [...document.querySelectorAll('#outputs code')].map((c) => c.textContent),
        })""")
        ulaw = page.evaluate("""async () => {
            const g711 = await import('/static/g711.js');
            const all = Int16Array.from({ length: 65536 }, (_, i) => i - 32768);
            return g711.bytesToBase64(g711.ulawEncode(all));
        }""")
        status = None
        hung_up_at = time.monotonic()
        if transport == "webrtc":
            page.close(run_before_unload=True)
        else:
            page.click("#hang-up")
            status = page.text_content("#status")
        ended = wait_for_log(server, f"call {call_id} ended", timeout=15)
        return {
            "title": title, **seen, "inboundLevels": inbound_levels, "screenshot": str(screenshot),
            "callId": call_id, "inputHookStatus": input_status, "serverEnded": ended,
            "secondsToEnd": time.monotonic() - hung_up_at, "statusAfterHangUp": status, "ulaw": ulaw,
            "console": console,
        }
    finally:
        browser.close()


def wait_for_log(server: Server, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.logs():
            return True
        time.sleep(0.1)
    return False


def main(results_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory() as work:
        wav = Path(work) / "caller.wav"
        write_wav(wav, np.concatenate([silence(LEAD_SILENCE, WAV_RATE), speech(SAID, WAV_RATE),
                                       silence(1.0, WAV_RATE)]), WAV_RATE)
        loopback_ice = ROOT / "tests" / "integration" / "loopback_ice"
        server = Server({"PYTHONPATH": str(loopback_ice), "BOT": BOT}, Path(work) / "server.log")
        try:
            with sync_playwright() as playwright:
                calls = {transport: run_call(playwright, server, wav, transport)
                         for transport in ("webrtc", "websocket")}
        except Exception:
            print(f"server log:\n{server.logs()}", file=sys.stderr)
            raise
        finally:
            server.stop()
        results_path.write_text(json.dumps({"calls": calls, "serverLog": server.logs()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
