"""The assistant's transfer_call tool: offered to the LLM (on a local server speaking the OpenAI wire protocol)
only where the call can be transferred and TRANSFER_NUMBER says where to; called, it hands the caller on after
its words; a transfer that failed is explained to the caller aloud and kept in the history."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from callbridge.bots.assistant import AssistantConfig, AssistantFactory, assistant_factory
from callbridge.bots.assistant.bot import TRANSFERRING
from callbridge.bots.base import AdditionalOutputs, Audio, BotOutput, CallInfo, Mark, Transfer, Turn
from tests.assistant_fixtures import ChatReply, FakeOpenAI, Providers, phone_speech

DESK = "+15550111"
PHONE = CallInfo(call_id="phone-1", transport="twilio", can_transfer=True)
BROWSER = CallInfo(call_id="browser-1", transport="websocket")
Online = Callable[..., AssistantFactory]


@pytest.fixture
async def online(server: FakeOpenAI) -> AsyncIterator[Online]:
    providers = Providers()

    def make(**settings: str) -> AssistantFactory:
        return providers.add(assistant_factory(AssistantConfig.from_env({
            "STT_BASE_URL": server.base_url, "LLM_BASE_URL": server.base_url, "LLM_MODEL": "test-model",
            **settings,
        })))

    yield make
    await providers.aclose()


async def collect(outputs: AsyncIterator[BotOutput]) -> list[BotOutput]:
    return [item async for item in outputs]


def said(outputs: list[BotOutput]) -> list[str]:
    return [item.args[0]["text"] for item in outputs
            if isinstance(item, AdditionalOutputs) and item.args[0]["role"] == "assistant"]


def offered(server: FakeOpenAI) -> list[str]:
    return [tool["function"]["name"] for tool in server.chats()[-1].body["tools"]]


async def ask(server: FakeOpenAI, bot, reply: ChatReply) -> list[BotOutput]:
    server.transcripts.append("Can I talk to a person, please?")
    server.chat_replies.append(reply)
    return await collect(bot.reply(Turn(phone_speech("Can I talk to a person, please?"), 16000)))


async def test_the_llm_transfers_a_phone_caller_after_its_words(server: FakeOpenAI, online: Online) -> None:
    bot = online(TRANSFER_NUMBER=DESK)(PHONE)
    outputs = await ask(server, bot, ChatReply(["Sure, I'll put you through to the front desk."],
                                               tool_calls=[("transfer_call", "{}")]))
    assert offered(server) == ["end_call", "transfer_call"]
    assert said(outputs) == ["Sure, I'll put you through to the front desk."]
    assert outputs[-1] == Transfer(DESK) and isinstance(outputs[-2], Mark), "the words are marked, then the transfer"


async def test_a_transfer_without_words_says_it_transfers(server: FakeOpenAI, online: Online) -> None:
    bot = online(TRANSFER_NUMBER=DESK)(PHONE)
    outputs = await ask(server, bot, ChatReply([], tool_calls=[("transfer_call", "{}")]))
    assert said(outputs) == [TRANSFERRING]
    assert any(isinstance(item, Audio) for item in outputs) and outputs[-1] == Transfer(DESK)


@pytest.mark.parametrize(("call", "settings"), [(BROWSER, {"TRANSFER_NUMBER": DESK}), (PHONE, {})],
                         ids=["browser", "no TRANSFER_NUMBER"])
async def test_no_transfer_tool_where_the_call_cannot_go_anywhere(
    server: FakeOpenAI, online: Online, caplog: pytest.LogCaptureFixture, call: CallInfo, settings: dict[str, str]
) -> None:
    bot = online(**settings)(call)
    with caplog.at_level(logging.WARNING, "callbridge.assistant"):
        outputs = await ask(server, bot, ChatReply(["Let me transfer you."], tool_calls=[("transfer_call", "{}")]))
    assert offered(server) == ["end_call"]
    assert not [item for item in outputs if isinstance(item, Transfer)], "a tool not offered does nothing"
    assert "called transfer_call, which this call does not offer" in caplog.text


async def test_a_failed_transfer_is_explained_aloud_and_kept_in_the_history(server: FakeOpenAI, online: Online) -> None:
    bot = online(TRANSFER_NUMBER=DESK)(PHONE)
    outputs = await collect(bot.on_transfer_failed(DESK, "the phone system refused the transfer"))
    explanation = "Sorry, I can't transfer you: the phone system refused the transfer."
    assert said(outputs) == [explanation]
    audio = np.concatenate([item.samples for item in outputs if isinstance(item, Audio)])
    assert len(audio) > 22050, "a second or more of espeak-ng speech"
    for item in outputs:
        if isinstance(item, Mark):
            bot.on_heard(item.name)
    assert bot.history == [{"role": "assistant", "content": explanation}]


def test_transfer_number_must_be_e164() -> None:
    with pytest.raises(ValueError, match=r"TRANSFER_NUMBER must be an E\.164 number"):
        AssistantConfig.from_env({"TRANSFER_NUMBER": "front desk"})
