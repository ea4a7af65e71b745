"""OpenAIChat against a local server that speaks the Chat Completions wire protocol (streamed SSE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import pytest

from callbridge.bots.assistant.brain import END_CALL, EndCallAction, Tool, ToolCall
from callbridge.bots.assistant.openai_api import OpenAIChat
from callbridge.bots.assistant.stage import StageError
from tests.assistant_fixtures import ChatReply, FakeOpenAI, Providers

TRANSFER = Tool("transfer_call", "Transfer the caller to a person.",
                {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]})
ASKED = [{"role": "user", "content": "What time do you open?"}]
Chat = Callable[..., OpenAIChat]


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    made = Providers()
    yield made
    await made.aclose()


@pytest.fixture
def chat(server: FakeOpenAI, providers: Providers) -> Chat:
    def make(**options: object) -> OpenAIChat:
        settings = {"api_key": "sk-test", "system_prompt": "You are Harbor.", **options}
        return providers.add(OpenAIChat(server.base_url, "test-model", **settings))  # type: ignore[arg-type]
    return make


async def test_deltas_in_order_and_the_server_gets_prompt_history_tools_key(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(["We open", " at 8", ". On Saturday", " at 9."]))
    history = [{"role": "assistant", "content": "Hello!"}, *ASKED]
    items = [item async for item in chat().respond(history, [END_CALL, TRANSFER])]
    assert items == ["We open", " at 8", ". On Saturday", " at 9."]
    (request,) = server.chats()
    assert request.body["model"] == "test-model"
    assert request.body["stream"] is True
    assert request.body["messages"] == [{"role": "system", "content": "You are Harbor."}, *history]
    assert request.body["tools"] == [END_CALL.as_openai(), TRANSFER.as_openai()]
    assert request.body["tools"][0]["function"]["name"] == "end_call"
    assert request.headers["Authorization"] == "Bearer sk-test"


async def test_no_tools_field_without_tools(server: FakeOpenAI, chat: Chat) -> None:
    assert [item async for item in chat().respond(ASKED, [])] == ["OK."]
    assert "tools" not in server.chats()[0].body


async def test_tool_call_fragments_are_assembled_after_the_text(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(["Goodbye", "!"], tool_calls=[("end_call", "{}")]))
    server.chat_replies.append(ChatReply(["One moment."], tool_calls=[("transfer_call", '{"to": "front desk"}')]))
    brain = chat()
    assert [item async for item in brain.respond(ASKED, [END_CALL])] == ["Goodbye", "!", EndCallAction()]
    assert [item async for item in brain.respond(ASKED, [END_CALL, TRANSFER])] == [
        "One moment.", ToolCall("transfer_call", {"to": "front desk"}, "call_0")]


async def test_tool_call_with_broken_arguments_is_a_stage_error(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply([], tool_calls=[("transfer_call", '{"to": ')]))
    with pytest.raises(StageError, match="transfer_call has arguments that are not JSON"):
        _ = [item async for item in chat().respond(ASKED, [TRANSFER])]


@pytest.mark.parametrize(("status", "said"), [
    (401, "HTTP 401: Incorrect API key provided."),
    (429, "HTTP 429: Rate limit reached for requests."),
    (500, "HTTP 500: The server had an error while processing your request."),
])
async def test_provider_errors_say_status_and_message(server: FakeOpenAI, status: int, said: str, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(status=status))
    with pytest.raises(StageError) as caught:
        _ = [item async for item in chat().respond(ASKED, [END_CALL])]
    assert caught.value.stage == "llm"
    assert caught.value.detail == said
    assert server.base_url in caught.value.provider and "test-model" in caught.value.provider
    assert len(server.chats()) == 1  # no retries: the caller is waiting


async def test_no_first_token_in_time(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(["Too late."], delay=3.0))
    started = time.perf_counter()
    with pytest.raises(StageError, match=r"llm \(.*\): nothing within 0.5 s"):
        _ = [item async for item in chat(first_token_timeout=0.5).respond(ASKED, [])]
    assert time.perf_counter() - started < 1.5


async def test_headers_and_an_empty_first_chunk_are_not_a_first_token(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(["Too late."], interval=2.0))  # the role chunk comes at once
    with pytest.raises(StageError, match=r"nothing within 0\.5 s"):
        _ = [item async for item in chat(first_token_timeout=0.5).respond(ASKED, [])]


async def test_slow_stream_after_the_first_token_is_fine(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply(["One.", " Two.", " Three."], interval=0.3))
    items = [item async for item in chat(first_token_timeout=0.5).respond(ASKED, [])]
    assert items == ["One.", " Two.", " Three."]


async def test_stopping_early_closes_the_http_stream(server: FakeOpenAI, chat: Chat) -> None:
    server.chat_replies.append(ChatReply([f"Sentence {n}. " for n in range(1, 41)], interval=0.05))
    async with aclosing(chat().respond(ASKED, [])) as items:
        assert await anext(items) == "Sentence 1. "
    stopped = time.monotonic()
    await asyncio.wait_for(server.stream_ended.wait(), 2.0)
    (stream,) = server.streams
    assert stream.disconnected
    assert stream.sent < stream.total // 2
    assert stream.at - stopped < 0.5


async def test_unreachable_server(providers: Providers) -> None:
    brain = providers.add(OpenAIChat("http://127.0.0.1:9/v1", "test-model", first_token_timeout=2.0))
    with pytest.raises(StageError, match="cannot connect"):
        _ = [item async for item in brain.respond(ASKED, [])]
