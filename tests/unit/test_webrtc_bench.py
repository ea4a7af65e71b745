"""bench/webrtc_caller.py reads a call: what counts as the answer, a split reply, the old reply and a stall."""

from __future__ import annotations

import numpy as np
import pytest

from bench.webrtc_caller import FRAME, RATE, Script48, WebRTCCaller, runs


def test_runs_join_times_closer_than_the_gap() -> None:
    assert runs(np.array([0.0, 0.1, 0.2, 1.0, 1.1, 3.0]), 0.5) == [(0.0, 0.2), (1.0, 1.1), (3.0, 3.0)]


def caller_with(heard: list[tuple[float, float, float]], gaps: list[tuple[float, float]]) -> WebRTCCaller:
    """A finished call: frames sent every 20 ms from 0 s, the caller's phrases at fixed times, and reply frames
    arriving every 20 ms at the RMS given by `heard` ((from, to, rms), else silence), none inside `gaps`."""
    silence = np.zeros(FRAME, np.int16)
    caller = WebRTCCaller("http://127.0.0.1:9", Script48(silence, silence, silence), lead_in=0.0)
    caller.mic.sent = [k * FRAME / RATE for k in range(30 * 50)]
    for name, onset, end in (("hello", 0.5, 2.0), ("story", 3.0, 6.0), ("interrupt", 8.0, 9.0)):
        caller.marks[name + "_onset"], caller.marks[name + "_end"] = round(onset * RATE), round(end * RATE)
    for k in range(30 * 50):
        t = k * 0.02
        if any(start <= t < stop for start, stop in gaps):
            continue
        caller.arrivals.append(t)
        caller.held.append(0.02)
        caller.loudness.append(next((rms for start, stop, rms in heard if start <= t < stop), 0.0))
    caller.started, caller.ended = 0.0, 30.0
    return caller


def test_a_call_is_read_as_a_phone_caller_would_hear_it() -> None:
    caller = caller_with(
        heard=[(2.55, 2.7, 15.0), (2.7, 2.9, 1000.0),  # hello's echo: the noise floor before the speech, then speech
               (4.0, 5.0, 1000.0),  # a reply while the caller still tells the story: split
               (6.6, 9.5, 1000.0),  # the story's answer, still heard 1.5 s after the barge-in's onset at 8.0
               (10.0, 11.0, 1000.0)],  # the answer to the interruption
        gaps=[(7.0, 7.2)],  # the player ran dry for 0.2 s in the middle of the story's answer
    )
    result = caller.analyse(0)
    assert result.failure is None
    assert result.turn_latency == pytest.approx([0.56, 0.6, 1.0], abs=0.011)
    assert result.split_replies == 1
    assert result.old_reply_after_onset == pytest.approx(1.48, abs=0.011)
    assert result.stall_seconds == pytest.approx(0.2, abs=0.011)


def test_a_stall_is_audio_running_out_whatever_the_packets_hold() -> None:
    """40 ms packets: one 20 ms late still plays on (the player had 40 ms); one 100 ms after the last leaves the
    player dry for 60 ms, as 20 ms packets 80 ms apart do."""
    caller = caller_with(heard=[(9.6, 10.0, 1000.0)], gaps=[(2.6, 3.0), (6.6, 7.0)])
    late = [2.6 + t for t in (0.0, 0.04, 0.08, 0.14, 0.18, 0.22, 0.26, 0.30, 0.34)]
    dry = [6.6 + t for t in (0.0, 0.04, 0.14, 0.18, 0.22, 0.26, 0.30, 0.34)]
    heard = sorted([*zip(caller.arrivals, caller.loudness, caller.held, strict=True),
                    *((t, 1000.0, 0.04) for t in late + dry)])
    caller.arrivals, caller.loudness, caller.held = (list(column) for column in zip(*heard, strict=True))
    assert caller.analyse(0).stall_seconds == pytest.approx(0.06, abs=0.001)


def test_an_unanswered_turn_and_an_unfinished_script() -> None:
    caller = caller_with(heard=[(2.6, 3.0, 1000.0)], gaps=[])
    assert caller.analyse(0).turn_latency[1:] == [None, None]
    caller.marks.pop("interrupt_end")
    assert caller.analyse(1).failure == "the script did not finish"


def test_the_turn_latency_counts_the_first_frame_with_sound_the_audible_one_the_first_audible() -> None:
    caller = caller_with(
        heard=[(2.5, 2.54, 0.1),  # the silence packet between replies: not a reply
               (2.54, 2.58, 3.0), (2.58, 2.7, 15.0), (2.7, 3.0, 1000.0),  # Opus ramping the noise floor in
               (6.5, 7.0, 1000.0), (9.4, 10.0, 1000.0)],
        gaps=[],
    )
    result = caller.analyse(0)
    assert result.turn_latency[0] == pytest.approx(0.54, abs=0.011)
    assert result.audible_latency[0] == pytest.approx(0.58, abs=0.011)
    assert result.turn_latency[1:] == result.audible_latency[1:] == pytest.approx([0.5, 0.4], abs=0.011)
