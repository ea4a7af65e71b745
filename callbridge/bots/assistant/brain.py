"""The brain: the conversation so far in, the reply out as streamed text and actions.

The bot owns the history (OpenAI chat messages without the system prompt: a brain holds its own
instructions) and passes it whole each turn, with the tools the call offers. A brain yields text deltas
as they come and actions (`EndCallAction`, or a `ToolCall` for any other tool) where it decides them.

`ScriptBrain` (script.py) answers from a dialog file, offline; `OpenAIChat` (openai_api.py) streams Chat
Completions from an OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Ends an assistant message the caller cut off: only the text before it was heard.
INTERRUPTED = "[interrupted by the caller]"

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly, efficient assistant answering a phone call. Everything you write is spoken aloud, "
    "so answer in one to three short sentences of plain text: no lists, markdown, emoji or symbols. "
    "When the caller says goodbye or has nothing more to ask, say a short goodbye and call the end_call tool. "
    f"A message of yours ending in {INTERRUPTED} was cut off: the caller heard only the text before it. "
    "A caller message like '(pressed 1)' means they pressed that key on the phone keypad."
)


@dataclass(frozen=True)
class Tool:
    """A function the brain may call; `parameters` is its arguments' JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


END_CALL = Tool("end_call", "Hang up the phone call, after your goodbye has been said.")
#: Offered only on calls that can be transferred, when TRANSFER_NUMBER says where to (AssistantBot.tools).
TRANSFER_CALL = Tool("transfer_call", "Transfer the phone call to a person on the staff, after telling the caller "
                     "you will. Use it when the caller asks for a person, or for help you cannot give.")


@dataclass(frozen=True)
class EndCallAction:
    """Hang up once what was said so far has been heard."""


@dataclass(frozen=True)
class ToolCall:
    """A call of any tool other than end_call, with its decoded arguments."""

    name: str
    arguments: Mapping[str, Any]
    call_id: str = ""


Action = EndCallAction | ToolCall


class Brain(Protocol):
    #: Names the provider in log lines and errors.
    name: str
    #: What the brain says first when the call starts; None leaves it to the bot's default.
    greeting: str | None
    #: What it asks a caller gone silent, and says before hanging up on one; None leaves them to the bot's.
    idle_prompt: str | None
    idle_goodbye: str | None

    def respond(
        self, history: Sequence[Mapping[str, str]], tools: Sequence[Tool]
    ) -> AsyncGenerator[str | Action, None]:
        """Reply to the last message of `history`; the consumer may stop early (aclose) at any point."""
        ...


def keypress_message(digit: str) -> dict[str, str]:
    """The user message for a key pressed on the phone keypad."""
    return {"role": "user", "content": f"(pressed {digit})"}


def pressed_key(message: Mapping[str, str]) -> str | None:
    """The key a `keypress_message` stands for, or None for speech."""
    content = message.get("content", "")
    if message.get("role") == "user" and content.startswith("(pressed ") and content.endswith(")"):
        return content.removeprefix("(pressed ").removesuffix(")")
    return None
