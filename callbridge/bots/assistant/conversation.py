"""TextConversation: the assistant's brain and history for a call whose speech the carrier does itself.

On ConversationRelay Twilio transcribes the caller and speaks our text: there is no audio here, no
speech-to-text, no sentence splitting, no text-to-speech. The brain's tokens go out as it writes them, and the
history keeps what the caller heard, as the spoken assistant's does (callbridge.bots.assistant.bot): a reply
counts whole unless Twilio reports an interruption, and then only its `utteranceUntilInterrupt`, marked
`INTERRUPTED`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from callbridge.bots.assistant.bot import APOLOGY, AssistantFactory, Stages
from callbridge.bots.assistant.brain import END_CALL, INTERRUPTED, Action
from callbridge.bots.assistant.stage import StageError

logger = logging.getLogger("callbridge.assistant")


@dataclass
class _TextReply:
    """One assistant message: the tokens sent, and what the caller heard of them once interrupted."""

    tokens: list[str] = field(default_factory=list)
    heard: str | None = None  # None: not interrupted, the caller heard every token

    def message(self) -> dict[str, str] | None:
        if self.heard is None:
            content = "".join(self.tokens).strip()
            return {"role": "assistant", "content": content} if content else None
        heard = self.heard.strip()
        return {"role": "assistant", "content": f"{heard} {INTERRUPTED}"} if heard else None


class TextConversation:
    """One call's conversation with the assistant's brain, in text: tokens out, what was heard kept."""

    tools = (END_CALL,)

    def __init__(self, stages: Stages, call_id: str) -> None:
        self.brain = stages.brain
        self.call_id = call_id
        # The welcome greeting, which ConversationRelay speaks before the first prompt, opens the history.
        self._log: list[dict[str, str] | _TextReply] = [_TextReply([stages.greeting])]

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as the brain sees it: caller messages, and assistant messages as heard."""
        messages = []
        for entry in self._log:
            message = entry.message() if isinstance(entry, _TextReply) else entry
            if message is not None:
                messages.append(message)
        return messages

    async def reply(self, message: dict[str, str]) -> AsyncGenerator[str | Action, None]:
        """The brain's answer to `message`, token by token as it writes them (and its actions, in order). Closing
        this generator closes the brain's stream (an LLM's HTTP response); a reply closed before its end (the
        caller spoke again) counts as interrupted after the tokens sent, unless Twilio said what was heard. A
        provider that fails costs the caller the apology and the service a warning."""
        self._log.append(message)
        history = self.history
        reply = _TextReply()
        self._log.append(reply)
        finished = False
        try:
            async with aclosing(self.brain.respond(history, self.tools)) as items:
                async for item in items:
                    if isinstance(item, str):
                        reply.tokens.append(item)
                    yield item
            finished = True
        except StageError as exc:
            logger.warning("call %s: assistant %s stage failed, the caller hears an apology: %s",
                           self.call_id, exc.stage, exc,
                           extra={"event": "assistant_stage_error", "call_id": self.call_id, "stage": exc.stage,
                                  "provider": exc.provider, "error": exc.detail})
            reply.tokens.append(APOLOGY)
            yield APOLOGY
            finished = True
        finally:
            if not finished and reply.heard is None:
                reply.heard = "".join(reply.tokens)

    def interrupted(self, heard: str) -> None:
        """The caller spoke over the latest reply after hearing `heard` of it (Twilio's utteranceUntilInterrupt)."""
        for entry in reversed(self._log):
            if isinstance(entry, _TextReply):
                entry.heard = heard
                return


def assistant_stages(factory: object) -> Stages | None:
    """The assistant's stages when BOT=assistant (their brain answers ConversationRelay prompts), else None."""
    return factory.stages if isinstance(factory, AssistantFactory) else None
