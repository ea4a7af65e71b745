"""ScriptBrain: an offline receptionist that answers from a dialog file (FAQ intents and a keypad menu).

The file (YAML, see data/harbor_dental.yaml) holds a greeting, intents scored by keywords and example
questions, a digit menu, a fallback, and optionally what to say to a caller gone silent. Matching works on
normalised, lightly stemmed words with some tolerance for misspellings, so a transcript like "what time you
open tomorrow" still finds the hours.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import yaml

from callbridge.bots.assistant.brain import END_CALL, INTERRUPTED, Action, EndCallAction, Tool, pressed_key

SHIPPED_SCRIPT = Path(__file__).parent / "data" / "harbor_dental.yaml"
#: An intent scoring less than this leaves the answer to the fallback.
MIN_SCORE = 1.0
#: The most the closest example question adds to an intent's score: when all its words (at least two:
#: a one-word example adds half) are heard.
EXAMPLE_WEIGHT = 2.0
#: Words this long or longer match a keyword spelled slightly differently ("apointment").
FUZZY_MIN_LENGTH = 5
FUZZY_RATIO = 0.8

#: Words that say nothing about what the caller wants; example questions are scored without them.
STOPWORDS = frozenset({
    "a", "an", "the", "i", "im", "id", "ill", "ive", "you", "your", "youre", "we", "our", "us", "do", "does",
    "did", "is", "are", "was", "be", "been", "am", "can", "could", "would", "will", "to", "of", "for", "on", "in",
    "at", "by", "me", "my", "it", "its", "what", "whats", "how", "please", "there", "that", "thats", "this", "and",
    "or", "with", "like", "want", "need", "just", "so", "if", "have", "has", "hi", "hello", "hey", "um", "uh",
    "yes", "yeah", "no", "not", "dont",
})
_SUFFIXES = ("ies", "ing", "ion", "ed", "es", "s", "e")


class ScriptError(ValueError):
    """The dialog file cannot be used; the message names the file and what is wrong."""


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; apostrophes dropped ("what's" -> "whats")."""
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("’", ""))


def stem(word: str) -> str:
    """A crude suffix stripper: "opening", "opens", "opened" -> "open"; "close", "closed" -> "clos"."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _same(heard: str, wanted: str) -> bool:
    if heard == wanted:
        return True
    return (min(len(heard), len(wanted)) >= FUZZY_MIN_LENGTH
            and SequenceMatcher(None, heard, wanted).ratio() >= FUZZY_RATIO)


def _contains(heard: Sequence[str], phrase: Sequence[str]) -> bool:
    """`phrase` occurs in `heard` as consecutive words."""
    span = len(phrase)
    return any(
        all(_same(heard[start + i], phrase[i]) for i in range(span)) for start in range(len(heard) - span + 1)
    )


@dataclass(frozen=True)
class Intent:
    name: str
    answer: str
    keywords: tuple[tuple[str, ...], ...]
    examples: tuple[tuple[str, ...], ...]
    end_call: bool = False
    repeat: bool = False

    def score(self, heard: Sequence[str]) -> float:
        found = sum(1 for keyword in self.keywords if _contains(heard, keyword))
        closest = max(
            (sum(1 for word in example if any(_same(h, word) for h in heard)) / max(len(example), 2)
             for example in self.examples),
            default=0.0,
        )
        return found + EXAMPLE_WEIGHT * closest


@dataclass(frozen=True)
class Script:
    greeting: str
    fallback: str
    unknown_key: str
    intents: tuple[Intent, ...]
    menu: Mapping[str, Intent]
    idle_prompt: str | None = None
    idle_goodbye: str | None = None

    def match(self, text: str) -> Intent | None:
        """The best-scoring intent for what the caller said, or None when nothing scores enough."""
        heard = [stem(word) for word in words(text)]
        best, best_score = None, MIN_SCORE - 1e-9
        for intent in self.intents:
            score = intent.score(heard)
            if score > best_score:
                best, best_score = intent, score
        return best


def _stems(text: str) -> tuple[str, ...]:
    return tuple(stem(word) for word in words(text))


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ScriptError(f"{where}: '{key}' must be a non-empty string")
    return " ".join(value.split())


def _intent(raw: Any, where: str) -> Intent:
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: each intent must be a mapping")
    name = _text(raw, "name", where)
    where = f"{where} '{name}'"
    keywords = tuple(dict.fromkeys(_stems(str(keyword)) for keyword in raw.get("keywords") or ()))
    examples = tuple(
        content for example in raw.get("examples") or ()
        if (content := tuple(stem(word) for word in words(str(example)) if word not in STOPWORDS))
    )
    if not any(keywords) and not examples:
        raise ScriptError(f"{where}: needs keywords or examples to be matched")
    return Intent(name=name, answer=_text(raw, "answer", where), keywords=tuple(k for k in keywords if k),
                  examples=examples, end_call=bool(raw.get("end_call")), repeat=bool(raw.get("repeat")))


def load_script(path: Path) -> Script:
    """Read and check a dialog file; every problem is reported with the file's name."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScriptError(f"{path}: cannot read the dialog file: {exc}") from exc
    where = str(path)
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: must be a mapping with greeting, fallback, intents and menu")
    if not isinstance(raw.get("intents"), list) or not raw["intents"]:
        raise ScriptError(f"{where}: 'intents' must be a non-empty list")
    intents = tuple(_intent(item, f"{where}: intent {i + 1}") for i, item in enumerate(raw["intents"]))
    by_name = {intent.name: intent for intent in intents}
    menu_raw = raw.get("menu") or {}
    if not isinstance(menu_raw, dict):
        raise ScriptError(f"{where}: 'menu' must map keypad keys to intent names")
    menu: dict[str, Intent] = {}
    for key, name in menu_raw.items():
        if str(name) not in by_name:
            raise ScriptError(f"{where}: menu key {key} names no intent: {name!r}")
        menu[str(key)] = by_name[str(name)]
    fallback = _text(raw, "fallback", where)
    return Script(greeting=_text(raw, "greeting", where), fallback=fallback,
                  unknown_key=_text(raw, "unknown_key", where) if "unknown_key" in raw else fallback,
                  intents=intents, menu=menu,
                  idle_prompt=_text(raw, "idle_prompt", where) if "idle_prompt" in raw else None,
                  idle_goodbye=_text(raw, "idle_goodbye", where) if "idle_goodbye" in raw else None)


def _last_said(history: Sequence[Mapping[str, str]]) -> str | None:
    for message in reversed(history[:-1]):
        if message.get("role") == "assistant":
            return message.get("content", "").replace(INTERRUPTED, "").strip() or None
    return None


class ScriptBrain:
    """Answers each turn from a `Script`: keypad keys through its menu, speech through intent matching."""

    def __init__(self, script: Script, name: str = "script") -> None:
        self.script = script
        self.name = name
        self.greeting = script.greeting
        self.idle_prompt = script.idle_prompt
        self.idle_goodbye = script.idle_goodbye

    @classmethod
    def from_file(cls, path: Path = SHIPPED_SCRIPT) -> ScriptBrain:
        return cls(load_script(path), name=f"script {path.name}")

    async def respond(
        self, history: Sequence[Mapping[str, str]], tools: Sequence[Tool]
    ) -> AsyncGenerator[str | Action, None]:
        last = history[-1] if history else {}
        key = pressed_key(last)
        if key is not None:
            intent = self.script.menu.get(key)
            if intent is None:
                yield self.script.unknown_key
                return
        else:
            intent = self.script.match(last.get("content", ""))
        if intent is None:
            yield self.script.fallback
            return
        yield (_last_said(history) or intent.answer) if intent.repeat else intent.answer
        if intent.end_call and any(tool.name == END_CALL.name for tool in tools):
            yield EndCallAction()
