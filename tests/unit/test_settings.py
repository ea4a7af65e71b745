"""Settings: defaults, validation messages, and documentation that cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callbridge.bots.assistant.config import VARIABLES as ASSISTANT_VARIABLES
from callbridge.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
NAMES = {name.upper() for name in Settings.model_fields} | set(ASSISTANT_VARIABLES)


def test_defaults_are_safe_for_a_first_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("BOT", raising=False)
    settings = load_settings()
    assert (settings.host, settings.port, settings.bot) == ("127.0.0.1", 8000, "assistant")
    assert 500 <= settings.pause_ms <= 800
    assert settings.vad_exit_threshold < settings.vad_enter_threshold


@pytest.mark.parametrize(("variable", "value"), [
    ("PORT", "not-a-port"), ("PORT", "70000"), ("PAUSE_MS", "-5"), ("VAD_BACKEND", "tensorflow"),
    ("PUBLIC_URL", "ftp://example.com"), ("LOG_FORMAT", "xml"), ("BARGE_IN", "maybe"), ("END_OF_TURN", "llm"),
    ("END_OF_TURN_ASK_MS", "10"), ("END_OF_TURN_THRESHOLD", "1.5"), ("TELNYX_PUBLIC_KEY", "not-a-key"),
    ("END_OF_TURN_ASK_EVERY_MS", "10"), ("END_OF_TURN_ASK_EVERY_MS", "-1"),
])
def test_an_invalid_value_names_its_variable(monkeypatch, tmp_path, variable, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert variable in str(error.value) and value in str(error.value)


def test_env_example_lists_every_setting_with_a_comment():
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = {}
    for number, line in enumerate(lines):
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=", line):
            listed[match.group(1)] = number
    assert set(listed) == NAMES
    for name, number in listed.items():
        assert lines[number - 1].startswith("# "), f"{name} needs a one-line comment above it"


def test_readme_settings_table_lists_every_setting():
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))
    assert documented == NAMES


def test_the_model_must_be_asked_before_the_pause_ends_the_turn(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_settings(end_of_turn="silence", end_of_turn_ask_ms=600).end_of_turn_ask_ms == 600  # unused then
    with pytest.raises(SettingsError, match="END_OF_TURN_ASK_MS must be below PAUSE_MS"):
        load_settings(end_of_turn="model", end_of_turn_ask_ms=512, pause_ms=512)


def test_vad_thread_auto_uses_a_thread_for_one_worker_and_the_loop_for_several():
    redis = {"redis_url": "redis://127.0.0.1:6379/0"}
    assert Settings(workers=1).vad_in_thread
    assert not Settings(workers=2, **redis).vad_in_thread
    assert Settings(workers=2, vad_thread="thread", **redis).vad_in_thread
    assert not Settings(workers=1, vad_thread="loop").vad_in_thread


def test_the_assistants_variables_are_the_ones_it_reads():
    source = (ROOT / "callbridge" / "bots" / "assistant" / "config.py").read_text()
    body = source.split("class AssistantConfigError")[1]
    assert set(re.findall(r'\("([A-Z][A-Z0-9_]+)"', body)) == set(ASSISTANT_VARIABLES)


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    (None, "127.0.0.1:8000", True),  # not a browser
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # the softphone, served here
    ("https://Bot.Example.com", "bot.example.com", True),  # behind a TLS proxy: the Host has no scheme
    ("https://bot.example.com", "10.0.0.5:8000", True),  # a proxy that rewrites Host: PUBLIC_URL's origin
    ("https://app.example.com/", "127.0.0.1:8000", True),  # listed in ALLOWED_ORIGINS
    ("http://app.example.com", "127.0.0.1:8000", False),  # another scheme is another origin
    ("https://evil.example", "127.0.0.1:8000", False),
    ("null", "127.0.0.1:8000", False),  # a sandboxed frame or a file
])
def test_which_origins_may_use_the_browser_routes(origin, host, allowed):
    settings = Settings(public_url="https://bot.example.com", allowed_origins="https://app.example.com, http://x.test")
    assert (settings.origin_refusal(origin, host) is None) == allowed


def test_allowed_origins_star_allows_any_and_a_bad_entry_is_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings(allowed_origins="*").origin_refusal("https://evil.example", "127.0.0.1:8000") is None
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://ok.example,app.example.com")
    with pytest.raises(SettingsError, match=r"ALLOWED_ORIGINS.*'app\.example\.com' is not an origin"):
        load_settings()
