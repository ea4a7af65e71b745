"""TextConversation with real brains: the shipped dialog file, and an LLM provider that cannot be reached."""

from __future__ import annotations

from contextlib import aclosing

from callbridge.bots.assistant.bot import APOLOGY, Stages
from callbridge.bots.assistant.brain import INTERRUPTED, EndCallAction, keypress_message
from callbridge.bots.assistant.conversation import TextConversation
from callbridge.bots.assistant.openai_api import OpenAIChat
from callbridge.bots.assistant.script import ScriptBrain
from callbridge.bots.assistant.stt import LocalWhisper
from callbridge.bots.assistant.tts import EspeakTTS
from tests.processes import free_port


def stages(brain) -> Stages:
    return Stages(LocalWhisper(), brain, EspeakTTS("en-us"))  # built, never loaded: text needs neither


async def said(conversation: TextConversation, message: dict[str, str]) -> list[object]:
    async with aclosing(conversation.reply(message)) as items:
        return [item async for item in items]


async def test_the_history_holds_the_greeting_each_turn_and_what_was_heard_of_an_interrupted_reply():
    brain = ScriptBrain.from_file()
    conversation = TextConversation(stages(brain), "VX1")
    assert conversation.history == [{"role": "assistant", "content": brain.greeting}]
    hours = await said(conversation, {"role": "user", "content": "When do you open?"})
    assert len(hours) == 1 and "Monday" in hours[0]
    conversation.interrupted("We're open Monday to")
    menu = await said(conversation, keypress_message("2"))
    assert conversation.history[1:] == [
        {"role": "user", "content": "When do you open?"},
        {"role": "assistant", "content": f"We're open Monday to {INTERRUPTED}"},
        {"role": "user", "content": "(pressed 2)"},
        {"role": "assistant", "content": menu[0]},
    ]


async def test_a_reply_interrupted_before_a_word_was_heard_leaves_the_history():
    conversation = TextConversation(stages(ScriptBrain.from_file()), "VX2")
    await said(conversation, {"role": "user", "content": "How much is a cleaning?"})
    conversation.interrupted("  ")
    assert [m["role"] for m in conversation.history] == ["assistant", "user"]


async def test_the_goodbye_intent_ends_the_call():
    conversation = TextConversation(stages(ScriptBrain.from_file()), "VX3")
    items = await said(conversation, {"role": "user", "content": "That's all, goodbye."})
    assert isinstance(items[-1], EndCallAction) and "goodbye" in str(items[0]).lower()


async def test_an_unreachable_llm_costs_the_caller_the_apology(caplog):
    brain = OpenAIChat(f"http://127.0.0.1:{free_port()}/v1", "m", first_token_timeout=2.0)
    try:
        conversation = TextConversation(stages(brain), "VX4")
        assert await said(conversation, {"role": "user", "content": "Hello?"}) == [APOLOGY]
    finally:
        await brain.aclose()
    assert conversation.history[-1] == {"role": "assistant", "content": APOLOGY}
    assert "assistant llm stage failed, the caller hears an apology" in caplog.text


async def test_a_reply_closed_before_its_end_counts_as_cut_after_the_tokens_sent():
    conversation = TextConversation(stages(ScriptBrain.from_file()), "VX5")
    async with aclosing(conversation.reply({"role": "user", "content": "Where are you located?"})) as items:
        first = await anext(items)  # the caller speaks again before the reply is over
    assert conversation.history[-1] == {"role": "assistant", "content": f"{first} {INTERRUPTED}"}


async def test_an_interrupt_during_the_greeting_cuts_the_greeting():
    brain = ScriptBrain.from_file()
    conversation = TextConversation(stages(brain), "VX6")
    conversation.interrupted("Thank you for calling")
    assert conversation.history == [{"role": "assistant", "content": f"Thank you for calling {INTERRUPTED}"}]
