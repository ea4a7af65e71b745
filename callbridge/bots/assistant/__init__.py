"""The assistant bot: speech-to-text -> brain -> sentence splitter -> text-to-speech, offline by default.

Register `assistant_factory()` as a bot factory; `await factory.prepare()` at start-up loads the models.
"""

from callbridge.bots.assistant.bot import AssistantBot, AssistantFactory, Stages, TurnTimings, assistant_factory
from callbridge.bots.assistant.config import AssistantConfig, AssistantConfigError

__all__ = [
    "AssistantBot",
    "AssistantConfig",
    "AssistantConfigError",
    "AssistantFactory",
    "Stages",
    "TurnTimings",
    "assistant_factory",
]
