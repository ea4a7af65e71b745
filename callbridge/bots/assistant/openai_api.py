"""One way to talk to OpenAI-compatible providers: a client for a configured URL, and errors in plain words."""

from __future__ import annotations

import openai

from callbridge.bots.assistant.stage import StageError

NO_KEY = "no-key"


def client(base_url: str, api_key: str, timeout: float) -> openai.AsyncOpenAI:
    """A client for `base_url` alone: no retries (the caller is waiting), no key read from the environment.

    Without a key the SDK still wants one: a placeholder goes out, which servers without auth ignore.
    """
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0)


def stage_error(stage: str, provider: str, exc: openai.OpenAIError) -> StageError:
    """What the provider said: its status code and error message, or why it could not be reached."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or exc.response.reason_phrase
        return StageError(stage, provider, f"HTTP {exc.status_code}: {message}")
    if isinstance(exc, openai.APITimeoutError):
        return StageError(stage, provider, "timed out")
    if isinstance(exc, openai.APIConnectionError):
        return StageError(stage, provider, f"cannot connect: {exc.__cause__ or exc}")
    return StageError(stage, provider, str(exc))
