"""Credentials masked out of every message that may show a configured URL."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from callbridge.bots.assistant.config import AssistantConfig, AssistantConfigError
from callbridge.bots.assistant.openai_api import OpenAIChat
from callbridge.bots.assistant.stage import StageError
from callbridge.redact import redact_url
from callbridge.settings import SettingsError, load_settings

SECRET = "s3cr3t"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    (f"redis://:{SECRET}@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
    (f"rediss://default:{SECRET}@redis.internal/2", "rediss://default:***@redis.internal/2"),
    (f"https://{SECRET}@llm.example.com/v1", "https://***@llm.example.com/v1"),  # a lone user name may be a key
    (f"redis://redis.internal/0?password={SECRET}&db=1", "redis://redis.internal/0?password=***&db=***"),
    (f"unix://:{SECRET}@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=***"),
    (f"redis://:{SECRET}@pass@redis.internal/0", "redis://:***@redis.internal/0"),  # an unquoted '@'
    (f"redis://:{SECRET}/x@redis.internal/0", "redis://***@redis.internal/0"),  # an unquoted '/'
    (f"redis//:{SECRET}@redis.internal/0?password={SECRET}", "***@redis.internal/0?***"),  # no scheme
    ("not a url", "not a url"),
    ("http://[::1", "http://[::1"),  # unparsable, and nothing to hide
])
def test_the_password_is_masked_and_the_service_still_named(url, shown):
    assert redact_url(url) == shown


def test_a_settings_error_shows_the_url_without_its_password(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUBLIC_URL", f"ftp://admin:{SECRET}@bot.example.com")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "PUBLIC_URL" in str(error.value) and "ftp://admin:***@bot.example.com" in str(error.value)
    assert SECRET not in str(error.value)


def test_the_assistants_config_error_shows_no_password():
    with pytest.raises(AssistantConfigError) as error:
        AssistantConfig.from_env({"LLM_BASE_URL": f"ftp://user:{SECRET}@llm.example.com", "LLM_MODEL": "m"})
    assert "LLM_BASE_URL" in str(error.value) and "ftp://user:***@llm.example.com" in str(error.value)
    assert SECRET not in str(error.value)


async def test_a_provider_failure_names_the_provider_without_its_password():
    brain = OpenAIChat(f"http://user:{SECRET}@127.0.0.1:9/v1", "test-model", first_token_timeout=2.0)
    async with aclosing(brain):
        with pytest.raises(StageError, match="cannot connect") as error:
            _ = [item async for item in brain.respond([{"role": "user", "content": "hi"}], [])]
    assert "http://user:***@127.0.0.1:9/v1" in str(error.value) and SECRET not in str(error.value)
