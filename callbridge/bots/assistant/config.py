"""The assistant's settings, read from environment variables and checked once, at start-up.

Nothing here reaches a network: a provider is used only when its URL is set. Unset, the assistant runs
offline: local Whisper, the shipped dialog file, espeak-ng.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from callbridge.bots.assistant.brain import DEFAULT_SYSTEM_PROMPT
from callbridge.bots.base import E164
from callbridge.redact import redact_url

TtsEngine = Literal["espeak", "piper", "openai"]
TTS_ENGINES: tuple[TtsEngine, ...] = ("espeak", "piper", "openai")


#: The environment variables the assistant reads (documented in .env.example and the README).
VARIABLES = (
    "GREETING", "STT_MODEL", "STT_BASE_URL", "STT_API_KEY", "STT_TIMEOUT_SECONDS", "LLM_BASE_URL", "LLM_MODEL",
    "LLM_API_KEY", "LLM_TIMEOUT_SECONDS", "SYSTEM_PROMPT", "SYSTEM_PROMPT_FILE", "ASSISTANT_SCRIPT", "TTS_ENGINE",
    "TTS_BASE_URL", "TTS_API_KEY", "TTS_MODEL", "TTS_VOICE", "TTS_SPEED", "TTS_TIMEOUT_SECONDS", "TRANSFER_NUMBER",
)


class AssistantConfigError(ValueError):
    """One or more settings are invalid; the message names each variable."""


@dataclass(frozen=True)
class AssistantConfig:
    #: Local Whisper: a CTranslate2 model folder ("" = the shipped tiny.en). With STT_BASE_URL: the model name.
    stt_model: str = ""
    stt_base_url: str = ""
    stt_api_key: str = field(default="", repr=False)  # never in a log line or traceback
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = field(default="", repr=False)  # never in a log line or traceback
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    #: The dialog file for the offline brain (None = the shipped example); not with LLM_BASE_URL.
    assistant_script: Path | None = None
    tts_engine: TtsEngine = "espeak"
    tts_base_url: str = ""
    tts_api_key: str = field(default="", repr=False)  # never in a log line or traceback
    tts_model: str = ""
    #: espeak-ng voice ("en-us"), Piper .onnx voice file ("" = the shipped one) or OpenAI voice name.
    tts_voice: str = ""
    #: espeak-ng's speaking rate in words per minute.
    tts_speed: int = 170
    greeting: str = ""
    stt_timeout_seconds: float = 10.0
    llm_timeout_seconds: float = 10.0
    tts_timeout_seconds: float = 10.0
    #: Where the LLM's transfer_call tool hands a phone caller on (E.164); "" offers no such tool. One number,
    #: set here, not chosen by the LLM: a caller cannot talk it into dialling anywhere else.
    transfer_number: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AssistantConfig:
        """Settings from `env` (default os.environ); raises AssistantConfigError naming every bad variable."""
        env = os.environ if env is None else env
        problems: list[str] = []

        def text(name: str) -> str:
            return env.get(name, "").strip()

        def url(name: str) -> str:
            value = text(name).rstrip("/")
            if value:
                parts = urlsplit(value)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    problems.append(f"{name} must be an http:// or https:// URL, got {redact_url(value)!r}")
            return value

        def seconds(name: str, default: float) -> float:
            raw = text(name)
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (0 < value < math.inf):
                problems.append(f"{name} must be a positive number of seconds, got {raw!r}")
                return default
            return value

        def existing_file(name: str) -> Path | None:
            raw = text(name)
            if not raw:
                return None
            path = Path(raw).expanduser()
            if not path.is_file():
                problems.append(f"{name}: no such file {raw!r}")
                return None
            return path

        stt_base_url, llm_base_url, tts_base_url = url("STT_BASE_URL"), url("LLM_BASE_URL"), url("TTS_BASE_URL")
        stt_model = text("STT_MODEL")
        if stt_model and not stt_base_url and not Path(stt_model).expanduser().is_dir():
            problems.append(f"STT_MODEL must be a CTranslate2 Whisper model folder, got {stt_model!r}")

        llm_model = text("LLM_MODEL")
        if llm_base_url and not llm_model:
            problems.append("LLM_MODEL must name the model when LLM_BASE_URL is set")
        system_prompt = text("SYSTEM_PROMPT")
        prompt_file = existing_file("SYSTEM_PROMPT_FILE")
        if system_prompt and prompt_file:
            problems.append("set SYSTEM_PROMPT or SYSTEM_PROMPT_FILE, not both")
        elif prompt_file is not None:
            system_prompt = prompt_file.read_text(encoding="utf-8").strip()
        script = existing_file("ASSISTANT_SCRIPT")
        if script is not None and llm_base_url:
            problems.append("ASSISTANT_SCRIPT is the offline brain's dialog file: unset it or LLM_BASE_URL")

        engine = text("TTS_ENGINE").lower() or ("openai" if tts_base_url else "espeak")
        if engine not in TTS_ENGINES:
            problems.append(f"TTS_ENGINE must be one of {', '.join(TTS_ENGINES)}, got {engine!r}")
            engine = "espeak"
        if engine == "openai" and not tts_base_url:
            problems.append("TTS_ENGINE=openai needs TTS_BASE_URL")
        voice = text("TTS_VOICE")
        if engine == "piper" and voice and not Path(voice).expanduser().is_file():
            problems.append(f"TTS_VOICE for piper must be a Piper .onnx voice file, got {voice!r}")
        speed = text("TTS_SPEED") or "170"
        if not speed.isdigit() or not 80 <= int(speed) <= 450:
            problems.append(f"TTS_SPEED must be words per minute between 80 and 450, got {speed!r}")
            speed = "170"

        transfer_number = text("TRANSFER_NUMBER")
        if transfer_number and not E164.fullmatch(transfer_number):
            problems.append(f"TRANSFER_NUMBER must be an E.164 number such as +15550100, got {transfer_number!r}")

        config = cls(
            stt_model=stt_model or ("whisper-1" if stt_base_url else ""),
            stt_base_url=stt_base_url, stt_api_key=text("STT_API_KEY"),
            llm_base_url=llm_base_url, llm_model=llm_model, llm_api_key=text("LLM_API_KEY"),
            system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT, assistant_script=script,
            tts_engine=engine,  # type: ignore[arg-type]  # checked against TTS_ENGINES above
            tts_base_url=tts_base_url, tts_api_key=text("TTS_API_KEY"),
            tts_model=text("TTS_MODEL") or ("tts-1" if engine == "openai" else ""),
            tts_voice=voice or {"espeak": "en-us", "openai": "alloy"}.get(engine, ""),
            tts_speed=int(speed), greeting=text("GREETING"),
            stt_timeout_seconds=seconds("STT_TIMEOUT_SECONDS", cls.stt_timeout_seconds),
            llm_timeout_seconds=seconds("LLM_TIMEOUT_SECONDS", cls.llm_timeout_seconds),
            tts_timeout_seconds=seconds("TTS_TIMEOUT_SECONDS", cls.tts_timeout_seconds),
            transfer_number=transfer_number,
        )
        if problems:
            raise AssistantConfigError("invalid assistant settings: " + "; ".join(problems))
        return config
