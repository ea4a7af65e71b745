"""Fixtures the assistant's unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from callbridge.core.vad import VadBatcher
from tests.assistant_fixtures import FakeOpenAI


@pytest.fixture
async def batcher(onnx_vad):
    batcher = VadBatcher(onnx_vad)
    yield batcher
    await batcher.close()


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    """A local server speaking the OpenAI wire protocol (chat, transcriptions, speech)."""
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()
