"""Shared fixtures: the real Silero models (loaded once per test session) and speech."""

from __future__ import annotations

import pytest

from callbridge.core.vad import VadModel, load_vad
from tests.speech import have_tools


@pytest.fixture(scope="session")
def onnx_vad() -> VadModel:
    return load_vad("onnx")


@pytest.fixture(scope="session")
def torch_vad() -> VadModel:
    """VAD_BACKEND=torch: optional (`make torch`); CI installs it, so both backends are tested there."""
    pytest.importorskip("torch", reason="torch is not installed (make torch)")
    return load_vad("torch")


@pytest.fixture(scope="session", autouse=True)
def _speech_tools() -> None:
    if not have_tools():
        pytest.fail("espeak-ng and sox are needed for speech fixtures: apt-get install -y espeak-ng sox")
