"""Resolve the BOT setting to a factory that makes one bot per call.

`BOT=assistant` is the conversational assistant (callbridge.bots.assistant), `BOT=echo` the echo bot, `BOT=mirror`
the video mirror (callbridge.bots.mirror);
`BOT=package.module:attr` names a `Bot` subclass, or a plain FastRTC-style handler function (wrapped in
`FunctionBot`). A factory may have `async prepare()`: the service runs it before it reports ready.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from functools import partial

from callbridge.bots.base import Bot, CallInfo
from callbridge.bots.echo import EchoBot
from callbridge.bots.function import FunctionBot
from callbridge.bots.mirror import MirrorBot

BotFactory = Callable[[CallInfo], Bot]



def _assistant() -> BotFactory:
    """The assistant, imported only when chosen: its stages load Whisper, a TTS engine and maybe an HTTP client.
    Its settings come from the environment and `.env`, like the service's own."""
    from dotenv import dotenv_values

    from callbridge.bots.assistant import AssistantConfig, AssistantConfigError, assistant_factory

    env = {**{k: v for k, v in dotenv_values(".env").items() if v is not None}, **os.environ}
    try:
        return assistant_factory(AssistantConfig.from_env(env))
    except AssistantConfigError as exc:
        raise BotLoadError(str(exc)) from None


BUILT_IN: dict[str, Callable[[], BotFactory]] = {
    "echo": lambda: EchoBot, "mirror": lambda: MirrorBot, "assistant": _assistant,
}


class BotLoadError(Exception):
    pass


def load_bot(spec: str, search_path: str = "") -> BotFactory:
    """The factory BOT names; `search_path` (BOT_PATH: folders, os.pathsep-separated) is where your own
    bot's module may live, besides the current folder and PYTHONPATH."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BotLoadError(f"BOT must be one of {sorted(BUILT_IN)} or 'package.module:attr', got {spec!r}")
    for folder in reversed([f for f in search_path.split(os.pathsep) if f]):
        folder = os.path.abspath(folder)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f"BOT_PATH ({search_path}), " if search_path else ""
        raise BotLoadError(
            f"cannot load BOT={spec!r}: {exc}; the module must be importable from {where}the current folder "
            f"({os.getcwd()}) or PYTHONPATH: set BOT_PATH to the folder that holds {module_name.split('.')[0]}"
        ) from exc
    except ImportError as exc:
        raise BotLoadError(f"cannot load BOT={spec!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError as exc:
        raise BotLoadError(f"cannot load BOT={spec!r}: {exc}") from exc
    if inspect.isclass(target) and issubclass(target, Bot):
        return target
    if callable(target):
        return partial(FunctionBot, fn=target)
    raise BotLoadError(f"BOT={spec!r} is neither a Bot subclass nor a callable")
