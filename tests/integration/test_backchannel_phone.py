"""Backchannels over a reply on the phone (BACKCHANNEL_RESUME, on by default), end to end: a simulated Twilio
caller says "uh-huh" (espeak-ng) in the middle of a long echo and still hears all of it; a long interruption
still cancels the reply and is answered; either way `clear` goes out as soon as the caller starts talking. The
assistant tells them apart by their words."""

from __future__ import annotations

from callbridge.bots.assistant.brain import INTERRUPTED
from callbridge.core.messages import ends_reply
from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForQuiet, WaitForReply
from tests.assistant_fixtures import ChatReply, FakeOpenAI
from tests.speech import peak_correlation, speech

RATE = 8000
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
PREROLL = 0.2  # the echo is the turn: PREROLL_MS of audio before the speech, then the speech
RESUME_POINT = 0.5  # a resumed reply repeats at most this much (callbridge.core.playback)


def call_lines(server, caller: SimulatedCaller) -> list[str]:
    return [line for line in server.logs().splitlines() if f"call {caller.stream_sid}" in line]


def assert_cleared_at_once(report, turn: int) -> None:
    assert len(report.clears) == 1, report.clears
    # Speech start needs SPEECH_START_MS (192) of speech; the clear follows within a window or two of that.
    assert 0.19 <= report.clears[0] - report.speech_starts[turn] < 0.35, report.clears[0] - report.speech_starts[turn]


async def test_an_uh_huh_in_the_middle_of_a_reply_lets_the_caller_hear_all_of_it(echo_server):
    story = speech(STORY, RATE)
    caller = SimulatedCaller(echo_server.url, [
        Pause(0.3), Speak(story), WaitForReply("start"), Pause(2.0), Speak(speech("Uh-huh.", RATE)),
        WaitForReply("heard", timeout=20)])
    report = await caller.run()
    assert report.close_code == 1000
    assert_cleared_at_once(report, 1)
    heard = report.heard_audio
    echo = len(story) / RATE + PREROLL
    # All of the echo was heard: cut at the clear, then resumed at most one resume point before it.
    assert echo - 0.1 <= len(heard) / RATE <= echo + RESUME_POINT + 0.1, (len(heard) / RATE, echo)
    tail = story[-3 * RATE :]
    assert peak_correlation(heard[-4 * RATE :], tail) > 0.9, "the resumed audio goes on to the story's end"
    assert peak_correlation(heard[: int(2.5 * RATE)], story[: int(1.8 * RATE)]) > 0.9, "its start was heard before"
    ends = [name for name in report.marks_echoed if ends_reply(name)]
    assert len(ends) == 1, report.marks_echoed  # one reply, ended once: the uh-huh was not answered
    lines = call_lines(echo_server, caller)
    assert any("barge-in: reply held" in line for line in lines), lines
    assert any("barge-in: reply resumed" in line for line in lines), lines
    await echo_server.wait_for_log(f"call {caller.stream_sid} ended: 2 turns, 1 barge-ins (1 resumed)")


async def test_a_long_interruption_still_cancels_the_reply_and_is_answered(echo_server):
    story, interruption = speech(STORY, RATE), speech("Wait, stop, I have a question about that.", RATE)
    caller = SimulatedCaller(echo_server.url, [
        Pause(0.3), Speak(story), WaitForReply("start"), Pause(2.0), Speak(interruption), WaitForReply("heard")])
    report = await caller.run()
    assert_cleared_at_once(report, 1)
    heard = report.heard_audio
    # The story stopped at the clear and never came back; the interruption was echoed whole.
    assert len(heard) / RATE < 3.0 + len(interruption) / RATE + PREROLL + 0.2
    assert peak_correlation(heard[-len(interruption) - int(PREROLL * RATE) :], interruption) > 0.9
    lines = call_lines(echo_server, caller)
    assert any("reply cancelled" in line and "over BACKCHANNEL_MAX_MS" in line for line in lines), lines
    await echo_server.wait_for_log(f"call {caller.stream_sid} ended: 2 turns, 1 barge-ins (0 resumed)")


async def test_with_backchannel_resume_off_an_uh_huh_cancels_the_reply_as_before(server_factory):
    server = server_factory(backchannel_resume="false")
    story, uh_huh = speech(STORY, RATE), speech("Uh-huh.", RATE)
    caller = SimulatedCaller(server.url, [
        Pause(0.3), Speak(story), WaitForReply("start"), Pause(2.0), Speak(uh_huh), WaitForReply("heard")])
    report = await caller.run()
    assert_cleared_at_once(report, 1)
    heard = report.heard_audio
    # The story stopped at the clear for good, and the uh-huh was a turn like any other: echoed.
    assert len(heard) / RATE < 3.0 + len(uh_huh) / RATE + PREROLL + 0.2
    assert peak_correlation(heard[-len(uh_huh) - int(PREROLL * RATE) :], uh_huh) > 0.9
    lines = call_lines(server, caller)
    assert any(line.endswith("barge-in") for line in lines) and not any("reply held" in line for line in lines)
    await server.wait_for_log(f"call {caller.stream_sid} ended: 2 turns, 1 barge-ins (0 resumed)")


async def test_the_assistant_resumes_its_reply_after_a_mm_hmm_and_answers_a_wait(server_factory):
    """The assistant's verdict over the phone: en-gb "Mm-hmm." (heard as "And then the..." before
    OVER_REPLY_PROMPT, bench/results/backchannel.md) lets the reply go on unanswered; "Wait." cancels it and is
    answered with what the caller heard of it in the history."""
    fake = FakeOpenAI()
    base_url = await fake.start()
    try:
        # ~27 s of speech: the whole reply stays on the Call's tape (callbridge.core.playback.MAX_UNHEARD_FRAMES).
        sentences = [f"This is sentence number {n} of a long answer about our opening hours." for n in range(1, 7)]
        fake.chat_replies.append(ChatReply(deltas=[s + " " for s in sentences], interval=0.2))
        fake.chat_replies.append(ChatReply(deltas=["Sure, go ahead."]))
        server = server_factory(bot="assistant", llm_base_url=base_url, llm_model="test-model", llm_api_key="k1")
        caller = SimulatedCaller(server.url, [
            WaitForQuiet(quiet=0.8, timeout=20), Speak(speech("Tell me everything about your opening hours.", RATE)),
            WaitForReply("start", timeout=20), Pause(3.0), Speak(speech("Mm-hmm.", RATE, voice="en-gb")),
            Pause(4.0), Speak(speech("Wait.", RATE)), WaitForReply("heard", timeout=30)])
        report = await caller.run()
        assert report.close_code == 1000
        assert len(report.clears) == 2, report.clears  # both stopped the audio at once
        lines = call_lines(server, caller)
        outcomes = [line.split("barge-in: ")[1] for line in lines if "barge-in: reply " in line]
        assert outcomes == ["reply held", "reply resumed", "reply held", "reply cancelled (not a backchannel)"], lines
        chats = fake.chats()
        assert len(chats) == 2, [c.body for c in chats]  # the mm-hmm was not answered, the wait was
        history = chats[1].body["messages"]
        assert history[-1]["role"] == "user" and "wait" in history[-1]["content"].lower(), history
        said = [m["content"] for m in history if m["role"] == "assistant"][-1]
        # The mm-hmm came 3 s into sentence 1 (~4.5 s long), the wait ~3 s after the reply resumed: sentence 1 was
        # heard whole, sentence 3 not at all.
        assert INTERRUPTED in said and "sentence number 1 " in said and "number 3 " not in said, said
    finally:
        await fake.stop()
