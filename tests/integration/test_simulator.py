"""`python -m callbridge call` as a tester uses it, against real servers on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from callbridge.core.messages import ends_reply
from tests.integration.conftest import ROOT
from tests.speech import have_tools, peak_correlation, read_wav, silence, speech, write_wav

RATE = 8000
PAUSE = 0.512  # PAUSE_MS's default
HELLO = "hello there"
EVENT = re.compile(r"^\s+(\d+\.\d+) s  (\S+)\s*(.*)$")

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")


def call(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    """The command as a tester runs it; PORT only when given (the tests' own environment has none)."""
    clean = {k: v for k, v in os.environ.items() if k != "PORT"}
    return subprocess.run([sys.executable, "-m", "callbridge", "call", *args], cwd=cwd, capture_output=True,
                          text=True, env={**clean, **env}, timeout=90)


def timeline(stdout: str) -> list[tuple[float, str, str]]:
    return [(float(m[1]), m[2], m[3]) for line in stdout.splitlines() if (m := EVENT.match(line))]


def first(events: list[tuple[float, str, str]], kind: str, detail: str = "") -> float:
    return next(t for t, k, d in events if k == kind and d.startswith(detail))


def reply_heard_to_its_end(events: list[tuple[float, str, str]]) -> float:
    """When the first reply's end mark was echoed (the marks inside a reply are its resume points)."""
    return next(t for t, k, d in events if k == "mark_echo" and ends_reply(d))


def latency_ms(stdout: str, what: str = "turn 1") -> int:
    match = re.search(rf"^{what}: \S+(?: of speech)? -> first reply audio (\d+) ms", stdout, re.M)
    assert match, stdout
    return int(match[1])


def test_latency_is_measured_from_the_end_of_speech_not_of_the_file(echo_server, tmp_path):
    wav = tmp_path / "trailing.wav"
    write_wav(wav, np.concatenate([speech(HELLO, RATE), silence(1.0, RATE)]), RATE)
    result = call(str(wav), "--url", echo_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    # The server answers PAUSE_MS after the speech, during the file's 1 s of silence: measured from the end of
    # the file this would be negative (and not reported at all). Silero may call the speech over up to two
    # 32 ms windows before its last sample, by the windows' phase (see test_phone), hence the 64 ms below.
    assert PAUSE * 1000 - 64 <= latency_ms(result.stdout) <= PAUSE * 1000 + 250, result.stdout
    events = timeline(result.stdout)
    assert first(events, "speech_end") < first(events, "reply") < first(events, "hangup")


def test_the_port_comes_from_the_environment_or_dotenv(echo_server, tmp_path):
    port = str(echo_server.port)
    by_env = call("--say", HELLO, cwd=tmp_path, PORT=port)
    assert by_env.returncode == 0 and "first reply audio" in by_env.stdout, by_env.stdout + by_env.stderr

    (tmp_path / ".env").write_text(f"# the server's settings\nPORT={port}\n")
    by_dotenv = call("--say", HELLO, cwd=tmp_path)
    assert by_dotenv.returncode == 0 and "first reply audio" in by_dotenv.stdout, by_dotenv.stdout

    # Settings the server would refuse still give their PORT, with a note saying so.
    (tmp_path / ".env").write_text(f"PORT={port}\nVAD_EXIT_THRESHOLD=0.9\n")
    noted = call("--say", HELLO, cwd=tmp_path)
    assert noted.returncode == 0, noted.stdout
    assert f"calling port {port}" in noted.stdout and "VAD_EXIT_THRESHOLD" in noted.stdout


@pytest.mark.parametrize("make", [
    ["-r", "22050"],  # espeak-ng's own rate, 16-bit mono
    ["-r", "44100", "-c", "2"],
    ["-r", "22050", "-e", "mu-law"],
    ["-r", "16000", "-e", "a-law"],
    ["-r", "11025", "-b", "8", "-e", "unsigned-integer"],
    ["-r", "48000", "-b", "24"],
    ["-r", "32000", "-b", "32", "-e", "floating-point"],
], ids=["22050", "stereo-44100", "mu-law", "a-law", "8-bit", "24-bit", "float"])
def test_any_wav_is_accepted_and_answered(echo_server, tmp_path, make):
    source, wav, out = tmp_path / "source.wav", tmp_path / "caller.wav", tmp_path / "heard.wav"
    write_wav(source, speech(HELLO, 22050), 22050)
    subprocess.run(["sox", str(source), *make, str(wav)], check=True)
    result = call(str(wav), "--url", echo_server.url, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    # The echo is what the file says: decoded, mixed down and resampled right.
    assert peak_correlation(read_wav(out), speech(HELLO, RATE)) > 0.9


def test_dtmf_is_pressed_once_the_reply_is_heard_and_each_answer_awaited(server_factory):
    server = server_factory(bot="tests.sample_bots:EchoKeypadBot")
    result = call("--say", HELLO, "--dtmf", "2#", "--url", server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    events = timeline(result.stdout)
    replies = [(t, d) for t, k, d in events if k == "reply"]
    assert len(replies) == 3, result.stdout  # the echo, digit 2's beep, '#''s goodbye
    # In the order they happened (the timeline is printed so): the digit goes as soon as the echo's mark comes
    # back, often within the same millisecond, so the printed times alone cannot order them.
    # Only a reply's end mark counts as its echo (the others are its resume points).
    order = [f"dtmf {d}" if k == "dtmf" else k for _, k, d in events
             if k in ("reply", "dtmf") or (k == "mark_echo" and ends_reply(d))]
    replies_at = [i for i, k in enumerate(order) if k == "reply"]
    echo_heard, two, hash_ = order.index("mark_echo"), order.index("dtmf 2"), order.index("dtmf #")
    assert replies_at[0] < echo_heard < two < replies_at[1] < hash_ < replies_at[2], result.stdout
    assert reply_heard_to_its_end(events) <= first(events, "dtmf", "2"), result.stdout
    assert "0.30 s heard" in replies[1][1] and "0.50 s heard" in replies[2][1], result.stdout
    assert latency_ms(result.stdout, "digit 2") < 500
    assert "the server closed the socket" in next(d for _, k, d in events if k == "hangup"), "the bot hung up"


def test_the_caller_waits_for_a_greeting_unless_told_to_talk_over_it(server_factory):
    server = server_factory(bot="tests.sample_bots:GreeterBot")
    polite = call("--say", HELLO, "--url", server.url)
    assert polite.returncode == 0, polite.stdout + polite.stderr
    events = timeline(polite.stdout)
    greeting_heard = reply_heard_to_its_end(events)  # the 2 s greeting played to its end
    assert first(events, "reply") + 1.9 < greeting_heard < first(events, "speech_start"), polite.stdout
    assert not any(k == "clear" for _, k, _ in events)
    assert "turn 1: end of speech -> first reply audio" in polite.stdout

    rude = call("--say", HELLO, "--url", server.url, "--talk-over")
    events = timeline(rude.stdout)
    assert first(events, "speech_start") < first(events, "reply") + 1.0, rude.stdout
    assert first(events, "speech_start") < first(events, "clear"), "the caller barged in on the greeting"


def test_a_bot_that_says_nothing_is_pointed_at_the_server_log(server_factory):
    server = server_factory(bot="tests.sample_bots:KeypadBot")  # its reply() says nothing
    result = call("--say", HELLO, "--url", server.url, "--wait", "3")
    assert result.returncode == 1
    sid = re.search(r"stream (MZ[0-9a-f]{32})", result.stdout)
    assert sid and "turn 1: no reply" in result.stdout, result.stdout
    assert f"the bot said nothing: check the server's log for 'call {sid[1]}: ...'" in result.stdout


def test_hold_keeps_the_line_open_in_silence_and_the_echo_bot_never_hangs_up_on_it(server_factory):
    """The echo bot says nothing to an idle caller, so IDLE_SECONDS never ends its calls: the caller hangs up."""
    server = server_factory(idle_seconds=1, idle_prompts=1)
    result = call("--say", HELLO, "--url", server.url, "--hold", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    events = timeline(result.stdout)
    assert [k for _, k, _ in events].count("reply") == 1, result.stdout  # the echo, nothing while idle
    hangup = next((t, d) for t, k, d in events if k == "hangup")
    assert hangup[1] == "the caller sent stop", result.stdout
    assert hangup[0] - reply_heard_to_its_end(events) >= 4 - 0.1, "held 4 s after the echo was heard"
    assert "idle caller" not in server.logs()


@pytest.mark.parametrize(("args", "says"), [
    (["{wav}"], "not a WAV file"),
    (["{mp3}"], "format 85"),
    (["{missing}"], "No such file"),
    ([], "give a WAV file or --say"),
    (["{wav}", "--say", "hi"], "give a WAV file or --say"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, says):
    (tmp_path / "notes.wav").write_text("these are my notes, not audio\n")
    header = b"WAVEfmt " + (16).to_bytes(4, "little") + bytes([85, 0, 1, 0]) + (8000).to_bytes(4, "little") * 2
    (tmp_path / "song.wav").write_bytes(b"RIFF\0\0\0\0" + header + bytes([2, 0, 16, 0]) + b"data\0\0\0\0")
    paths = {"wav": tmp_path / "notes.wav", "mp3": tmp_path / "song.wav", "missing": tmp_path / "none.wav"}
    result = call(*(a.format(**paths) for a in args), "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert len(result.stdout.strip().splitlines()) == 1 and says in result.stdout, result.stdout
    assert "Traceback" not in result.stderr and not result.stderr.strip(), result.stderr
