"""AssistantConfig from the environment: offline defaults, providers only when configured, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbridge.bots.assistant import AssistantConfig, AssistantConfigError, Stages, assistant_factory
from callbridge.bots.assistant.brain import DEFAULT_SYSTEM_PROMPT
from callbridge.bots.assistant.openai_api import OpenAIChat, OpenAISpeech, OpenAITranscription
from callbridge.bots.assistant.script import ScriptBrain
from callbridge.bots.assistant.stt import LocalWhisper
from callbridge.bots.assistant.tts import EspeakTTS


def test_defaults_are_offline() -> None:
    config = AssistantConfig.from_env({})
    assert config == AssistantConfig(tts_voice="en-us")
    stages = Stages.from_config(config)
    assert isinstance(stages.stt, LocalWhisper)
    assert isinstance(stages.brain, ScriptBrain)
    assert isinstance(stages.tts, EspeakTTS) and stages.apology_tts is stages.tts


def test_providers_when_their_urls_are_set() -> None:
    config = AssistantConfig.from_env({
        "STT_BASE_URL": "http://127.0.0.1:8001/v1/", "LLM_BASE_URL": "https://llm.internal/v1", "LLM_MODEL": "m",
        "TTS_BASE_URL": "http://127.0.0.1:8002/v1", "LLM_TIMEOUT_SECONDS": "2.5", "GREETING": "Hi there!",
    })
    assert config.stt_base_url == "http://127.0.0.1:8001/v1"
    assert (config.stt_model, config.tts_engine, config.tts_model, config.tts_voice) == (
        "whisper-1", "openai", "tts-1", "alloy")
    assert config.llm_timeout_seconds == 2.5
    stages = Stages.from_config(config)
    assert isinstance(stages.stt, OpenAITranscription) and isinstance(stages.brain, OpenAIChat)
    assert isinstance(stages.tts, OpenAISpeech)
    assert isinstance(stages.apology_tts, EspeakTTS)  # the apology must not depend on the speech provider
    assert stages.greeting == "Hi there!"
    assert stages.brain.system_prompt == DEFAULT_SYSTEM_PROMPT  # type: ignore[attr-defined]


def test_system_prompt_from_a_file(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You answer for Rosie's Bakery.\n")
    config = AssistantConfig.from_env({"SYSTEM_PROMPT_FILE": str(prompt)})
    assert config.system_prompt == "You answer for Rosie's Bakery."


def test_own_dialog_file(tmp_path: Path) -> None:
    script = tmp_path / "bad.yaml"
    script.write_text("greeting: hi\n")
    config = AssistantConfig.from_env({"ASSISTANT_SCRIPT": str(script)})
    with pytest.raises(AssistantConfigError, match=rf"ASSISTANT_SCRIPT: {script}: 'intents'"):
        assistant_factory(config)


@pytest.mark.parametrize(("env", "named"), [
    ({"LLM_BASE_URL": "ftp://llm.internal", "LLM_MODEL": "m"}, "LLM_BASE_URL must be an http:// or https:// URL"),
    ({"LLM_BASE_URL": "localhost:8000/v1", "LLM_MODEL": "m"}, "LLM_BASE_URL must be an http"),
    ({"STT_BASE_URL": "http://"}, "STT_BASE_URL must be an http"),
    ({"TTS_BASE_URL": "ws://x"}, "TTS_BASE_URL must be an http"),
    ({"LLM_BASE_URL": "http://127.0.0.1:1/v1"}, "LLM_MODEL must name the model"),
    ({"TTS_ENGINE": "festival"}, "TTS_ENGINE must be one of espeak, piper, openai"),
    ({"TTS_ENGINE": "openai"}, "TTS_ENGINE=openai needs TTS_BASE_URL"),
    ({"LLM_TIMEOUT_SECONDS": "0"}, "LLM_TIMEOUT_SECONDS must be a positive number"),
    ({"STT_TIMEOUT_SECONDS": "soon"}, "STT_TIMEOUT_SECONDS must be a positive number"),
    ({"TTS_TIMEOUT_SECONDS": "inf"}, "TTS_TIMEOUT_SECONDS must be a positive number"),
    ({"TTS_SPEED": "fast"}, "TTS_SPEED must be words per minute"),
    ({"STT_MODEL": "/nowhere/whisper"}, "STT_MODEL must be a CTranslate2 Whisper model folder"),
    ({"SYSTEM_PROMPT_FILE": "/nowhere/prompt.txt"}, "SYSTEM_PROMPT_FILE: no such file"),
    ({"ASSISTANT_SCRIPT": "/nowhere/script.yaml"}, "ASSISTANT_SCRIPT: no such file"),
    ({"TTS_ENGINE": "piper", "TTS_VOICE": "/nowhere/voice.onnx"}, "TTS_VOICE for piper must be a Piper .onnx"),
])
def test_bad_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(AssistantConfigError, match=named):
        AssistantConfig.from_env(env)


def test_every_problem_at_once() -> None:
    with pytest.raises(AssistantConfigError) as caught:
        AssistantConfig.from_env({"LLM_BASE_URL": "nope", "TTS_ENGINE": "x", "STT_TIMEOUT_SECONDS": "-1"})
    for name in ("LLM_BASE_URL", "LLM_MODEL", "TTS_ENGINE", "STT_TIMEOUT_SECONDS"):
        assert name in str(caught.value)


def test_a_whisper_folder_without_its_files_is_refused(tmp_path: Path) -> None:
    config = AssistantConfig.from_env({"STT_MODEL": str(tmp_path)})
    with pytest.raises(AssistantConfigError, match=r"STT_MODEL: .* lacks model\.bin"):
        Stages.from_config(config)


def test_api_keys_stay_out_of_the_configs_repr():
    from callbridge.bots.assistant.config import AssistantConfig

    config = AssistantConfig.from_env({"LLM_BASE_URL": "http://127.0.0.1:9/v1", "LLM_MODEL": "m",
                                       "LLM_API_KEY": "sk-llm", "STT_API_KEY": "sk-stt", "TTS_API_KEY": "sk-tts"})
    assert config.llm_api_key == "sk-llm"
    assert not any(key in repr(config) for key in ("sk-llm", "sk-stt", "sk-tts"))
