"""The softphone page in a real headless Chromium, over WebRTC and the µ-law WebSocket, and with the camera
(video and audio-video calls to the mirror bot).

The calls run in softphone_session.py inside `unshare -n` (a network namespace with only loopback), so
neither WebRTC nor anything else can reach a real network. Outside CI the tests skip when Chromium,
Playwright or unprivileged namespaces are missing; in CI (CI=true) they fail instead, since .ci/run
installs what they need.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callbridge.codec import ulaw_encode
from tests.browser.softphone_session import CAMERA_BANDS, CHROMIUM, LABEL, PAUSE_MS

ROOT = Path(__file__).resolve().parents[2]
TURN_ORDER = ["caller", "listening", "bot", "listening"]


def missing_requirement() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install -y chromium"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: pip install -e '.[test]'"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) and ip (iproute2) are needed for a loopback-only network namespace"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One softphone call per transport and per video modality, made once for all the tests below."""
    problem = missing_requirement()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    results = tmp_path_factory.mktemp("browser") / "results.json"
    run = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.browser.softphone_session", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, f"browser session failed:\n{run.stdout[-5000:]}\n{run.stderr[-8000:]}"
    return json.loads(results.read_text())


@pytest.fixture(scope="module")
def calls(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return session["calls"]


def assert_turn_states_in_order(states: list[str]) -> None:
    """The page showed caller speaking, then listening, then bot speaking, then listening again."""
    position = 0
    for state in states:
        if position < len(TURN_ORDER) and state == TURN_ORDER[position]:
            position += 1
    assert position == len(TURN_ORDER), states


def assert_common(call: dict[str, Any]) -> None:
    assert call["title"] == "callbridge softphone"
    assert call["console"] == [], "the page logged errors"
    logs = [m["data"] for m in call["messages"] if m["type"] == "log"]
    assert logs == ["started_talking", "pause_detected", "response_starting", "playback_finished"], logs
    assert_turn_states_in_order(call["states"])
    assert call["turnStateText"] == "Listening"
    # The fake microphone's speech reached the page's own input meter.
    assert call["peakMicDb"] > -30
    # The reply was heard: the page's analyser on the bot's audio saw speech-level signal. Before the
    # reply the bot sends silence (or nothing), so this level can only come from the echoed turn.
    assert call["peakBotDb"] > -30
    # The bot's additional output (set through /input_hook) arrived and is shown.
    assert call["inputHookStatus"] == 200
    outputs = [m["data"] for m in call["messages"] if m["type"] == "fetch_output"]
    assert len(outputs) == 1 and outputs[0][0]["label"] == LABEL
    assert 2.5 < outputs[0][0]["seconds"] < 4.0, "the turn is the spoken sentence plus pre-roll"
    assert len(call["outputsShown"]) == 1 and LABEL in call["outputsShown"][0]
    assert Path(call["screenshot"]).stat().st_size > 10_000
    assert call["serverEnded"], "the server did not end the call"


#: What #reply-latency shows once a reply has been timed.
REPLY_SHOWN = re.compile(r"Reply after (\d+) ms · median (\d+) ms over (\d+) turns?")


def assert_reply_timed(call: dict[str, Any]) -> int:
    """The page timed the echo from its own audio (end of the fake microphone's sentence → the echo heard), and
    shows and logs the same number, with what it measures. Returns the reply time shown (ms).

    Bounds: the server ends the turn only after PAUSE_MS of silence (counted in 32 ms VAD windows, Silero's
    one or two lingering windows included, so at least PAUSE_MS - 64 ms), and the echo then opens with the
    turn's 200 ms pre-roll, digital silence here; so the first bot audio the page can hear comes more than
    PAUSE_MS after the speech ended. Above: the pause and the pre-roll (~0.7 s) leave 800 ms for 20 ms
    packets, the jitter buffer (WebRTC) or the 60 ms playback lead (WebSocket), and a shared, loaded machine;
    slower is a reply held somewhere, or a page timing from the wrong moment (its speech's start is ~2.5 s
    earlier; the server's pause_detected ~0.2 s before the audio).
    """
    shown = REPLY_SHOWN.fullmatch(call["replyLatencyText"])
    assert shown, call["replyLatencyText"]
    latency, median, turns = (int(group) for group in shown.groups())
    # One sentence, one reply: the median of one turn is that turn.
    assert turns == 1 and median == latency
    assert [round(ms) for ms in call["replyLatenciesMs"]] == [latency]
    assert PAUSE_MS < latency < PAUSE_MS + 1000, latency
    # The message log has the same number, and no reply it could not time.
    assert call["replyLatencyLog"] == [f"reply after {latency} ms (end of your speech → first bot audio)"]
    assert call["replyLatencyHint"] == ("end of your speech → first bot audio, measured in this page; includes "
                                        "the network and the browser's jitter buffer")
    assert "not your sound card's own delay" in call["replyLatencyExplained"]
    assert Path(call["latencyScreenshot"]).stat().st_size > 10_000
    return latency


def test_webrtc_call(calls):
    call = calls["webrtc"]
    assert_common(call)
    assert_reply_timed(call)
    # WebRTC's own statistics see the reply on the remote track while the bot speaks.
    assert max(call["inboundLevels"]) > 0.1
    # Closing the page ended the call on the server at once (no waiting for ICE consent to expire).
    assert call["secondsToEnd"] < 5


def test_websocket_call(calls):
    call = calls["websocket"]
    assert_common(call)
    assert_reply_timed(call)
    assert call["statusAfterHangUp"] == "call ended: you hung up"


def test_a_listen_only_call_after_a_call_with_the_microphone(calls):
    """The same page calls again in listen-only mode (no microphone): nothing of the last call's audio is reused."""
    assert calls["websocket"]["nextCall"] == {"active": True, "errors": []}


def test_reply_timer_times_only_replies_to_finished_speech(calls):
    """The page's reply timer on made-up 10 ms level windows: from the last loud microphone window to the bot's
    first audible one; a reply that begins while the caller speaks (or within a gap between their words) is
    not timed, never negative; the bot's voice coming back through the microphone is not a turn; speech
    over the bot that goes on once the bot stops (a barge-in) is."""
    cases = calls["websocket"]["replyTimerCases"]
    # Speech to 1000 ms (last loud window 990) and the reply at 1600; again 2000-2500 and 3100.
    answered = cases["answered"]
    assert [event["ms"] for event in answered["events"]] == [1600, 3100]
    assert answered["latenciesMs"] == pytest.approx([610, 610]) and answered["medianMs"] == pytest.approx(610)
    assert cases["overlapped"]["events"] == [{"ms": 500, "overlapped": True}]
    assert cases["inSpeechGap"]["events"] == [{"ms": 1050, "overlapped": True}]
    for name in ("overlapped", "inSpeechGap"):
        assert cases[name]["latenciesMs"] == [] and cases[name]["medianMs"] is None
    assert cases["echo"]["events"] == []
    assert cases["bargeIn"]["latenciesMs"] == pytest.approx([710])


def test_page_ulaw_matches_the_codec(calls):
    """The page's JavaScript µ-law encoder agrees with codec/ (audioop) on every 16-bit sample."""
    page = np.frombuffer(base64.b64decode(calls["websocket"]["ulaw"]), np.uint8)
    reference = np.frombuffer(ulaw_encode(np.arange(-32768, 32768, dtype=np.int16)), np.uint8)
    assert np.array_equal(page, reference)


#: Codec and colour-space conversion move a grey level by a few steps; the bands are 60 apart.
GREY_TOLERANCE = 25


def close_to(seen: list[float], expected: list[float] | tuple[int, ...]) -> bool:
    return all(abs(a - b) < GREY_TOLERANCE for a, b in zip(seen, expected, strict=True))


@pytest.mark.parametrize("modality", ["video", "audio-video"])
def test_video_call_shows_the_camera_mirrored(session, modality):
    call = session["videoCalls"][modality]
    assert call["console"] == [], "the page logged errors"
    assert call["status"] == f"in a call over WebRTC ({modality})"
    assert call["videoShown"]
    # The local preview shows the fake camera's bands, dark to bright, left to right.
    local, remote = call["local"], call["remote"]
    assert close_to(local["bands"], CAMERA_BANDS), local
    # The bot's video is the camera's picture mirrored, at the camera's size...
    assert (remote["width"], remote["height"]) == (640, 480)
    mirrored = local["bands"][::-1]
    assert close_to(remote["bands"], mirrored), remote
    # ... with the clock's black box in the top-left corner, where the mirrored camera is brightest.
    assert remote["corner"] < CAMERA_BANDS[0] < remote["bands"][0] - 100
    # Frames keep arriving (decoded over a second of the call), not one still picture.
    before, after = call["framesDecoded"]
    assert after > before
    assert call["serverEnded"], "the server did not end the call"


def test_audio_video_call_also_echoes_the_turn(session):
    call = session["videoCalls"]["audio-video"]
    logs = [m["data"] for m in call["messages"] if m["type"] == "log"]
    assert logs == ["started_talking", "pause_detected", "response_starting", "playback_finished"], logs
    assert call["peakMicDb"] > -30 and call["peakBotDb"] > -30
    assert_turn_states_in_order(call["states"])


def test_video_only_call_has_no_audio(session):
    call = session["videoCalls"]["video"]
    assert call["peakMicDb"] == float("-inf"), "no microphone is opened for a video call"
    assert [m for m in call["messages"] if m["type"] == "log"] == []


def test_a_refused_modality_is_shown(session):
    """A video call to the audio-only bot: the page shows the server's reason and is ready to call again."""
    refused = session["refusedVideo"]
    assert "this bot handles audio calls, not video" in refused["status"]
    assert any("BOT=mirror handles video" in error for error in refused["errors"])
    assert refused["callEnabled"]


def test_a_refused_camera_is_shown(session):
    """The browser refuses the camera: the page says what to do, and no call is offered."""
    denied = session["deniedCamera"]
    assert "permission for the camera was refused: allow it in the browser's site settings" in denied["status"]
    assert denied["callEnabled"]
