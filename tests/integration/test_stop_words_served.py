"""STOP_WORDS on a real served echo bot: over the browser µ-law socket and on a simulated phone call."""

from __future__ import annotations

import numpy as np

from tests.integration.clients import browser_call
from tests.integration.test_api import run_cli
from tests.speech import silence, speech

RATE = 8000
ADDRESSED = "computer, what time is it"
NOT_ADDRESSED = "what time is it"


async def test_only_the_turn_with_the_stop_word_is_answered_and_announced_over_the_browser_socket(server_factory):
    server = server_factory(stop_words="computer")
    ignored, addressed = speech(NOT_ADDRESSED, RATE), speech(ADDRESSED, RATE)
    audio = np.concatenate([silence(0.5, RATE), ignored, silence(1.5, RATE), addressed, silence(1.5, RATE)])
    result = await browser_call(server.url, "stop-words-1", audio, pace=0.02, timeout=30)
    assert [m for m in result.messages if m["type"] == "stopword"] == [{"type": "stopword", "data": "computer"}]
    assert result.logs.count("pause_detected") == 2
    assert result.logs.count("response_starting") == 1
    stopword_at = next(i for i, m in enumerate(result.messages) if m["type"] == "stopword")
    assert result.messages.index({"type": "log", "data": "response_starting"}) > stopword_at
    # The echo is the addressed turn, whole (its stop word too: pre-roll + speech), and nothing of the first.
    assert abs(len(result.reply) - (len(addressed) + 0.2 * RATE)) < 0.2 * RATE
    assert "turn ignored: no stop word" in server.logs()


def test_the_phone_is_gated_too(server_factory):
    """Twilio carries no client messages: the caller just hears no answer to a turn without the stop word."""
    server = server_factory(stop_words="computer")
    unanswered = run_cli("call", "--say", NOT_ADDRESSED, "--url", server.url, "--wait", "5")
    assert unanswered.returncode == 1 and "turn 1: no reply" in unanswered.stdout, unanswered.stdout
    answered = run_cli("call", "--say", ADDRESSED, "--url", server.url)
    assert answered.returncode == 0, answered.stdout
    assert "end of speech -> first reply audio" in answered.stdout
