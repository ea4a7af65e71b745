"""Calls the bot from the softphone page in a real headless Chromium; run inside a loopback-only namespace.

    unshare -n python -m tests.browser.softphone_session RESULTS.json

Brings up `lo`, starts `python -m callbridge` on 127.0.0.1 with a FastRTC-style bot that echoes the caller's
turn and publishes an additional output, and for each transport launches Chromium with a fake microphone
that plays a spoken sentence once. On the page it clicks Call, sets the bot's input through
`/input_hook`, waits for the echo to be played, saves a screenshot while the bot speaks and one after the reply
with the page's reply time (tests/browser/artifacts/), then ends the call (WebRTC: by closing the page;
WebSocket: Hang up) and records what the page and the server saw. The page's reply timer is also fed made-up
level windows (a reply, one that overlaps the speech, the bot's echo, a barge-in) to record what it counts.
Then video: a second server runs the shipped mirror bot (BOT=mirror), Chromium's fake camera plays a Y4M file
of four grey bands, and for each of the video and audio-video modalities the page calls, and the session reads
pixels of the remote <video> and of the local preview through a canvas, counts decoded frames, and saves a
screenshot. A video offer to the audio-only bot,
and a video call whose camera the browser denies, record what the page shows. test_softphone.py runs this and
asserts on RESULTS.json; nothing here decides pass or fail.
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
#: The server's PAUSE_MS, set here so that the reply times the page shows can be judged against it.
PAUSE_MS = 512
VIDEO_BOT = "mirror"
#: The fake camera: vertical bands of these lumas, left to right (grey: no chroma).
CAMERA_BANDS = (40, 100, 160, 220)
CAMERA_SIZE = (480, 640)


def write_y4m(path: Path, frames: int = 30) -> None:
    """A Y4M clip of CAMERA_BANDS for Chromium's fake camera (it loops the file)."""
    height, width = CAMERA_SIZE
    luma = np.repeat(np.array(CAMERA_BANDS, np.uint8), width // len(CAMERA_BANDS))[None, :].repeat(height, 0)
    chroma = np.full((height // 2, width // 2), 128, np.uint8).tobytes()
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + luma.tobytes() + chroma + chroma)


def chromium_flags(wav: Path, y4m: Path | None = None) -> list[str]:
    camera = [f"--use-file-for-fake-video-capture={y4m}"] if y4m else []
    return [*camera,
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


#: The page's ReplyTimer fed 10 ms level windows (-20 dBFS: sound, -90: quiet) by the millisecond ranges each
#: side is loud in: what it returns at each window, and the replies it times.
REPLY_TIMER_CASES = """async () => {
    const { ReplyTimer } = await import('/static/reply-timer.js');
    const inside = (ms, ranges) => ranges.some(([from, to]) => from <= ms && ms < to);
    const run = (mic, bot) => {
        const timer = new ReplyTimer();
        const events = [];
        for (let ms = 0; ms < 4000; ms += 10) {
            const event = timer.step(ms / 1000, inside(ms, mic) ? -20 : -90, inside(ms, bot) ? -20 : -90);
            if (event) events.push({ ms, ...event });
        }
        return { events, latenciesMs: timer.latenciesMs, medianMs: timer.medianMs() };
    };
    return {
        answered: run([[0, 1000], [2000, 2500]], [[1600, 1900], [3100, 3500]]),
        overlapped: run([[0, 1000]], [[500, 1500]]),
        inSpeechGap: run([[0, 1000], [1100, 1500]], [[1050, 1400]]),
        echo: run([[0, 1060]], [[0, 1000], [1300, 1600]]),
        bargeIn: run([[500, 2000]], [[0, 1000], [2700, 3000]]),
    };
}"""


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
        latency_screenshot = ARTIFACTS / f"softphone-{transport}-latency.png"
        page.screenshot(path=str(latency_screenshot), full_page=True)
        seen = page.evaluate("""() => ({
            replyLatencyText: document.getElementById('reply-latency').textContent,
            replyLatencyExplained: document.querySelector('.reply-latency').title,
            replyLatencyHint: document.querySelector('.reply-latency small').textContent,
            replyLatencyLog: [...document.querySelectorAll('#log li span')].map((s) => s.textContent)
                .filter((text) => text.startsWith('reply after') || text.includes('not timed')),
            replyLatenciesMs: window.softphone.replyTimer.latenciesMs,
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
        timer_cases = page.evaluate(REPLY_TIMER_CASES) if transport == "websocket" else None
        status = None
        hung_up_at = time.monotonic()
        if transport == "webrtc":
            page.close(run_before_unload=True)
        else:
            page.click("#hang-up")
            status = page.text_content("#status")
        ended = wait_for_log(server, f"call {call_id} ended", timeout=15)
        next_call = None
        if transport == "websocket":  # the same page calls again, without the microphone this time
            next_call = page.evaluate("""async () => {
                await window.softphone.call('webrtc', 'receive');
                return { active: window.softphone.active,
                         errors: [...document.querySelectorAll('#log li span')].map((s) => s.textContent)
                             .filter((text) => text.startsWith('error')) };
            }""")
            if next_call["active"]:
                page.wait_for_function("window.softphone.pc.connectionState === 'connected'", timeout=CALL_TIMEOUT_MS)
                page.click("#hang-up")
        return {
            "title": title, **seen, "inboundLevels": inbound_levels, "screenshot": str(screenshot),
            "latencyScreenshot": str(latency_screenshot), "replyTimerCases": timer_cases,
            "callId": call_id, "inputHookStatus": input_status, "serverEnded": ended,
            "secondsToEnd": time.monotonic() - hung_up_at, "statusAfterHangUp": status, "ulaw": ulaw,
            "console": console, "nextCall": next_call,
        }
    finally:
        browser.close()


#: Reads a <video> through a canvas: the luma-ish mean (R+G+B)/3 at the middle row of each band's centre,
#: and the mean of the top-left 4x4 pixels (the border of the black box the mirror bot draws its clock on).
READ_VIDEO = """([id, bands]) => {
    const video = document.getElementById(id);
    const width = video.videoWidth, height = video.videoHeight;
    if (!width) return null;
    const canvas = Object.assign(document.createElement("canvas"), { width, height });
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(video, 0, 0);
    const grey = (x, y, w, h) => {
        const data = context.getImageData(x, y, w, h).data;
        let sum = 0;
        for (let i = 0; i < data.length; i += 4) sum += (data[i] + data[i + 1] + data[i + 2]) / 3;
        return sum / (data.length / 4);
    };
    const band = width / bands;
    return {
        width, height,
        bands: Array.from({ length: bands }, (_, i) => grey(Math.round(band * (i + 0.5)) - 4, height / 2 - 4, 8, 8)),
        corner: grey(0, 0, 4, 4),
    };
}"""

FRAMES_DECODED = """async () => {
    let decoded = 0;
    (await window.softphone.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") decoded = s.framesDecoded || 0;
    });
    return decoded;
}"""


def run_video_call(playwright: Playwright, server: Server, wav: Path, y4m: Path, modality: str) -> dict[str, Any]:
    """A softphone call with the fake camera against the mirror bot: what the remote video and preview show."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium_flags(wav, y4m))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        page.goto(f"{server.url}/?transport=webrtc&modality={modality}")
        page.click("#call")
        page.wait_for_function("window.softphone.stateHistory.includes('listening')", timeout=CALL_TIMEOUT_MS)
        page.wait_for_function("document.getElementById('remote-video').videoWidth > 0", timeout=CALL_TIMEOUT_MS)
        decoded_before = page.evaluate(FRAMES_DECODED)
        page.wait_for_timeout(1000)
        decoded_after = page.evaluate(FRAMES_DECODED)
        remote = page.evaluate(READ_VIDEO, ["remote-video", len(CAMERA_BANDS)])
        local = page.evaluate(READ_VIDEO, ["local-video", len(CAMERA_BANDS)])
        if modality == "audio-video":
            # The mirror bot also says each turn back: wait for the echo of the fake microphone's sentence.
            page.wait_for_function("window.softphone.stateHistory.includes('bot')", timeout=CALL_TIMEOUT_MS)
            page.wait_for_function("Number(document.getElementById('bot-meter').dataset.db) > -30",
                                   timeout=CALL_TIMEOUT_MS)
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / f"softphone-{modality}.png"
        page.screenshot(path=str(screenshot), full_page=True)
        if modality == "audio-video":
            page.wait_for_function(
                "window.softphone.messages.some((m) => m.type === 'log' && m.data === 'playback_finished')",
                timeout=CALL_TIMEOUT_MS,
            )
        seen = page.evaluate("""() => ({
            states: window.softphone.stateHistory,
            messages: window.softphone.messages,
            peakBotDb: window.softphone.peakBotDb,
            peakMicDb: window.softphone.peakMicDb,
            status: document.getElementById('status').textContent,
            videoShown: !document.getElementById('video-card').hidden,
        })""")
        call_id = page.text_content("#call-id")
        page.click("#hang-up")
        ended = wait_for_log(server, f"call {call_id} ended", timeout=15)
        return {**seen, "remote": remote, "local": local, "framesDecoded": [decoded_before, decoded_after],
                "screenshot": str(screenshot), "serverEnded": ended, "console": console}
    finally:
        browser.close()


def run_refused_video_call(playwright: Playwright, server: Server, flags: list[str]) -> dict[str, Any]:
    """A video call the bot (audio only) or the browser (`--use-fake-ui-for-media-stream=deny`) refuses: what the
    page tells the caller."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
    try:
        page = browser.new_page()
        page.goto(f"{server.url}/?transport=webrtc&modality=video")
        page.click("#call")
        page.wait_for_function("!window.softphone.active", timeout=CALL_TIMEOUT_MS)
        return page.evaluate("""() => ({
            status: document.getElementById('status').textContent,
            errors: [...document.querySelectorAll('#log li.error span')].map((s) => s.textContent),
            callEnabled: !document.getElementById('call').disabled,
        })""")
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
        y4m = Path(work) / "camera.y4m"
        write_y4m(y4m)
        loopback_ice = ROOT / "tests" / "integration" / "loopback_ice"
        server = Server({"PYTHONPATH": str(loopback_ice), "BOT": BOT, "PAUSE_MS": str(PAUSE_MS)},
                        Path(work) / "server.log")
        video_server = None
        try:
            with sync_playwright() as playwright:
                calls = {transport: run_call(playwright, server, wav, transport)
                         for transport in ("webrtc", "websocket")}
                refused = run_refused_video_call(playwright, server, chromium_flags(wav, y4m))
                denied = run_refused_video_call(playwright, server, [
                    *chromium_flags(wav, y4m), "--use-fake-ui-for-media-stream=deny"])
                video_server = Server({"PYTHONPATH": str(loopback_ice), "BOT": VIDEO_BOT},
                                      Path(work) / "video-server.log")
                video_calls = {modality: run_video_call(playwright, video_server, wav, y4m, modality)
                               for modality in ("video", "audio-video")}
        except Exception:
            print(f"server log:\n{server.logs()}", file=sys.stderr)
            if video_server is not None:
                print(f"video server log:\n{video_server.logs()}", file=sys.stderr)
            raise
        finally:
            server.stop()
            if video_server is not None:
                video_server.stop()
        results_path.write_text(json.dumps({"calls": calls, "videoCalls": video_calls, "refusedVideo": refused,
                                            "deniedCamera": denied,
                                            "serverLog": server.logs()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
