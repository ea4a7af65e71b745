"""The offline assistant loads without the OpenAI SDK (over a second to import) or faster-whisper (loaded by
`prepare`): the service pays for either only when it uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import callbridge

PROVIDER_URLS = ("LLM_BASE_URL", "STT_BASE_URL", "TTS_BASE_URL")
#: Loads the bot as the service does, and prints which of the heavy modules that imported.
SCRIPT = """
import sys
from callbridge.bots.loader import load_bot
load_bot("assistant")
print(sorted(name for name in ("openai", "faster_whisper") if name in sys.modules))
"""


def heavy_modules_loaded(tmp_path: Path, **settings: str) -> str:
    """What loading the assistant imports, run in `tmp_path` (no .env there) with no provider URL but `settings`."""
    env = {name: value for name, value in os.environ.items() if name not in PROVIDER_URLS}
    root = str(Path(callbridge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(settings)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_offline_assistant_imports_neither_openai_nor_whisper(tmp_path: Path) -> None:
    assert heavy_modules_loaded(tmp_path) == "[]"


def test_a_provider_url_imports_openai(tmp_path: Path) -> None:
    assert heavy_modules_loaded(tmp_path, LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_MODEL="m") == "['openai']"
