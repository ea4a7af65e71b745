"""Twilio ConversationRelay end to end: a client speaking ConversationRelay's wire protocol to a real server on
loopback, the assistant's brain answering (the shipped dialog file offline, or an LLM behind a local server that
speaks the Chat Completions wire protocol)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from callbridge.bots.assistant.brain import INTERRUPTED
from callbridge.edge.relay import END_CALL_HANDOFF
from callbridge.simulator import start_message, webhook
from tests.assistant_fixtures import ChatReply, FakeOpenAI
from tests.integration.clients import raw_exchange
from tests.integration.conftest import Server
from tests.integration.relay_client import RelayClient, relay_webhook, setup_message

TOKEN = "relay-auth-token-123"
HOURS_WORDS = ("monday", "friday", "saturday", "sunday")


class ThreadedFakeOpenAI:
    """FakeOpenAI on its own event loop in a thread: one LLM server for the module's tests (each test has its own
    loop), and the server under test pointed at it once."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    async def stream_count(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` streamed responses have ended."""
        deadline = time.monotonic() + timeout
        while len(self.fake.streams) < count:
            assert time.monotonic() < deadline, "the LLM stream did not end"
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedFakeOpenAI]:
    fake = ThreadedFakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def script_server(server_factory):
    return server_factory(bot="assistant")


@pytest.fixture(scope="module")
def llm_server(server_factory, llm):
    return server_factory(bot="assistant", llm_base_url=llm.base_url, llm_model="test-model", llm_api_key="k1")


@pytest.fixture(scope="module")
def signed_server(server_factory):
    """One slot, signatures required: the limit shared with Twilio calls, and the signature checks."""
    return server_factory(bot="assistant", concurrency_limit=1, twilio_auth_token=TOKEN,
                          public_url="http://127.0.0.1:{port}")


async def test_the_offline_script_answers_prompts_and_keys_and_ends_the_call(script_server):
    twiml = relay_webhook(script_server.url)
    assert twiml.url == f"ws://127.0.0.1:{script_server.port}/relay/handler"
    assert "Harbor Dental" in twiml.attributes["welcomeGreeting"]
    assert twiml.attributes["language"] == "en-US" and twiml.attributes["dtmfDetection"] == "true"
    assert set(twiml.parameters) == {"token", "From", "To"}
    session_id = "VX" + "5" * 32
    async with RelayClient(twiml) as client:
        await client.setup(session_id=session_id)
        await client.prompt("What time do you open tomorrow morning?")
        hours = await client.reply()
        assert hours.last and all(word in hours.text.lower() for word in HOURS_WORDS), hours
        await client.dtmf("2")  # the menu's address
        address = await client.reply()
        assert address.last and address.text and address.text != hours.text
        await client.prompt("That's all, thank you, goodbye.")
        goodbye = await client.reply()
        assert "goodbye" in goodbye.text.lower()
        end = await client.message()
        assert end["type"] == "end" and json.loads(end["handoffData"])["reasonCode"] == "end_call"
        assert await client.closed() == (1000, "")
    await script_server.wait_for_log(f"call {session_id} ended: 3 turns")  # the slot is freed after the close


async def test_llm_tokens_stream_out_as_written_with_the_greeting_in_the_history(llm_server, llm):
    llm.fake.chat_replies.append(ChatReply(deltas=["We open", " at eight", " tomorrow."], interval=0.2))
    async with RelayClient(relay_webhook(llm_server.url)) as client:
        await client.setup()
        asked = await client.prompt("When do you open?")
        reply = await client.reply()
        done = time.monotonic()
    assert reply.tokens == ["We open", " at eight", " tomorrow."]
    assert reply.first_token_at is not None
    # Streamed: the first token arrived well before the LLM finished writing (0.2 s between its deltas).
    assert done - reply.first_token_at >= 0.3 and reply.first_token_at - asked < done - asked - 0.3
    request = llm.fake.chats()[-1]
    assert request.headers["Authorization"] == "Bearer k1" and request.body["stream"] is True
    messages = [(m["role"], m["content"]) for m in request.body["messages"]][1:]  # after the system prompt
    assert messages == [("assistant", "Hello! How can I help you?"), ("user", "When do you open?")]
    assert [tool["function"]["name"] for tool in request.body["tools"]] == ["end_call"]


async def test_an_interrupt_closes_the_llm_stream_and_the_history_keeps_what_was_heard(llm_server, llm):
    words = [f"word{n} " for n in range(60)]
    llm.fake.chat_replies.append(ChatReply(deltas=words, interval=0.1))  # 6 s of writing
    llm.fake.chat_replies.append(ChatReply(deltas=["Sure."]))
    streams = len(llm.fake.streams)
    async with RelayClient(relay_webhook(llm_server.url)) as client:
        await client.setup()
        await client.prompt("Tell me a long story.")
        started = await client.reply(tokens=3)
        assert started.tokens == words[:3]
        await client.interrupt("word0 word1", "460")  # Twilio's docs show the duration as a string too
        interrupted_at = time.monotonic()
        await llm.stream_count(streams + 1)
        stream = llm.fake.streams[streams]
        assert stream.disconnected and stream.sent < stream.total
        assert stream.at - interrupted_at < 0.5  # closed at once, not when the LLM finished
        # No token of the interrupted reply follows (one may have been on the wire as the interrupt went out).
        await asyncio.sleep(0.3)
        await client.prompt("Wait, what?")
        after = await client.reply()
        assert after.tokens[-1:] == ["Sure."] and len(after.tokens) <= 2, after
    history = [(m["role"], m["content"]) for m in llm.fake.chats()[-1].body["messages"]][1:]
    assert history == [("assistant", "Hello! How can I help you?"), ("user", "Tell me a long story."),
                       ("assistant", f"word0 word1 {INTERRUPTED}"), ("user", "Wait, what?")]


async def test_a_prompt_during_a_reply_closes_its_stream_and_the_history_marks_it_cut(llm_server, llm):
    words = [f"word{n} " for n in range(60)]
    llm.fake.chat_replies.append(ChatReply(deltas=words, interval=0.1))
    llm.fake.chat_replies.append(ChatReply(deltas=["Yes", "?"]))
    streams = len(llm.fake.streams)
    async with RelayClient(relay_webhook(llm_server.url)) as client:
        await client.setup()
        await client.prompt("Tell me a long story.")
        await client.reply(tokens=3)
        await client.prompt("Hello?")  # no interrupt: Twilio had not started speaking it
        rest = await client.reply()
        assert rest.tokens[-2:] == ["Yes", "?"] and all(t in words for t in rest.tokens[:-2])
        await llm.stream_count(streams + 2)  # the short answer may end first: the fake sees a hang-up as it writes
        (story,) = [stream for stream in llm.fake.streams[streams:] if stream.total == len(words) + 2]
        assert story.disconnected and story.sent < story.total
    cut = llm.fake.chats()[-1].body["messages"][-2]
    assert cut["role"] == "assistant" and cut["content"].startswith("word0 word1 word2")
    assert cut["content"].endswith(INTERRUPTED) and "word59" not in cut["content"]


async def test_the_llms_end_call_tool_ends_the_session(llm_server, llm):
    llm.fake.chat_replies.append(ChatReply(deltas=["Goodbye", "!"], tool_calls=[("end_call", "{}")]))
    async with RelayClient(relay_webhook(llm_server.url)) as client:
        await client.setup()
        await client.prompt("That's all, bye.")
        assert (await client.reply()).tokens == ["Goodbye", "!"]
        end = await client.message()
        assert end == {"type": "end", "handoffData": END_CALL_HANDOFF}
        assert await client.closed() == (1000, "")


@pytest.mark.parametrize(("messages", "code", "reason"), [
    ([{"type": "prompt", "voicePrompt": "hi", "last": True}], 1008, "'prompt' before setup"),
    ([{"type": "dtmf", "digit": "1"}], 1008, "'dtmf' before setup"),
    (["setup", "setup"], 1008, "unexpected 'setup' after setup"),
    (["setup", "{not json"], 1007, "message is not valid JSON"),
    (["setup", {"event": "media"}], 1007, 'message has no "type" string'),
    (["setup", {"type": "prompt", "last": True}], 1007, "'prompt' message lacks voicePrompt"),
    (["setup", {"type": "prompt", "voicePrompt": "hi", "last": "yes"}], 1007, "prompt.last must be a boolean"),
    (["setup", {"type": "interrupt", "utteranceUntilInterrupt": "x", "durationUntilInterruptMs": "soon"}], 1007,
     "interrupt.durationUntilInterruptMs must be a number of milliseconds"),
    (["setup", {"type": "media"}], 1007, "unknown message type 'media'"),
    ([b"\x00\x01"], 1003, "binary frames are not part of this protocol; send JSON text"),
])
async def test_bad_input_gets_a_clear_close_and_a_healthy_session_beside_it_is_unaffected(
        script_server, messages, code, reason):
    healthy = RelayClient(relay_webhook(script_server.url))
    async with healthy:
        await healthy.setup()
        twiml = relay_webhook(script_server.url)
        frames = [setup_message(twiml) if m == "setup" else m if isinstance(m, str | bytes) else json.dumps(m)
                  for m in messages]
        url = script_server.url.replace("http", "ws") + "/relay/handler"
        _, closed = await raw_exchange(url, frames)
        assert closed == code
        await script_server.wait_for_log(reason)
        await healthy.prompt("Where are you located?")
        assert (await healthy.reply()).last


async def test_forged_replayed_and_missing_tokens_are_refused(script_server):
    twiml = relay_webhook(script_server.url)
    url = twiml.url
    token = twiml.parameters["token"]
    forged = {**twiml.parameters, "token": token[:-1] + ("1" if token.endswith("0") else "0")}
    _, closed = await raw_exchange(url, [setup_message(twiml, customParameters=forged)])
    assert closed == 1008
    _, closed = await raw_exchange(url, [setup_message(twiml, customParameters={})])
    assert closed == 1008
    assert "invalid or missing call token (start the call through /relay/incoming)" in script_server.logs()
    async with RelayClient(twiml) as first:
        await first.setup()
        await first.prompt("What are your prices?")
        assert (await first.reply()).last
        async with RelayClient(twiml) as replayed:
            await replayed.setup()
            assert await replayed.closed() == (1008, "call token already used: it opens one session")


async def test_signatures_are_checked_on_the_webhook_and_the_socket(signed_server):
    base = signed_server.url
    with pytest.raises(RuntimeError, match="webhook answered 403"):
        relay_webhook(base)
    with pytest.raises(RuntimeError, match="webhook answered 403"):
        relay_webhook(base, signature="forged-signature=")
    twiml = relay_webhook(base, auth_token=TOKEN)
    async with RelayClient(twiml) as unsigned:
        assert await unsigned.closed() == (1008, "invalid Twilio signature")
    async with RelayClient(twiml, auth_token="not-the-token") as forged:
        assert await forged.closed() == (1008, "invalid Twilio signature")
    async with RelayClient(twiml, auth_token=TOKEN) as signed:
        await signed.setup()
        await signed.prompt("Do you take insurance?")
        assert (await signed.reply()).last


async def test_relay_sessions_and_twilio_calls_share_the_one_limit(signed_server):
    """CONCURRENCY_LIMIT=1: a Twilio call holds the slot, so a relay call is refused, and the other way round."""
    base = signed_server.url
    stream_url, params = webhook(base, auth_token=TOKEN)
    call_sid = params.pop("CallSid")
    relay_twiml = relay_webhook(base, auth_token=TOKEN)  # taken while the slot was free
    signature = RequestValidator(TOKEN).compute_signature(stream_url, {})
    async with connect(stream_url, additional_headers={"X-Twilio-Signature": signature}) as phone:
        await phone.send(start_message("MZ" + "a" * 32, call_sid, params))
        await phone.recv()  # the greeting's audio: the call holds the slot
        with pytest.raises(RuntimeError, match="call rejected"):
            relay_webhook(base, auth_token=TOKEN)
        async with RelayClient(relay_twiml, auth_token=TOKEN) as refused:
            await refused.setup()
            body = await refused.message()
            assert body == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 1}}
            assert await refused.closed() == (1013, "concurrency_limit_reached")
    await asyncio.sleep(0.3)  # the phone call's slot is freed
    async with RelayClient(relay_webhook(base, auth_token=TOKEN), auth_token=TOKEN) as session:
        await session.setup()
        await session.prompt("Where are you?")
        assert (await session.reply()).last
        with pytest.raises(RuntimeError, match="call rejected"):
            webhook(base, auth_token=TOKEN)


async def test_a_drain_lets_a_relay_session_finish_within_the_grace_period(tmp_path):
    server = Server({"BOT": "assistant", "SHUTDOWN_GRACE_SECONDS": "20"}, tmp_path / "server.log")
    try:
        async with RelayClient(relay_webhook(server.url)) as client:
            await client.setup()
            await asyncio.sleep(0.2)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert server.process.poll() is None, "the server must wait for the session"
            await client.prompt("What time do you open?")
            assert (await client.reply()).last
        await asyncio.to_thread(server.process.wait, 15)  # the session gone, the drain ends at once
        assert server.process.returncode == 0
    finally:
        server.stop()


def test_without_the_assistant_the_webhook_says_why(echo_server):
    with pytest.raises(RuntimeError, match="webhook answered 503: ConversationRelay needs BOT=assistant"):
        relay_webhook(echo_server.url)
