"""ScriptBrain answers from the shipped dialog file: intents by what was said, the keypad menu, goodbye."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from callbridge.bots.assistant.brain import END_CALL, INTERRUPTED, EndCallAction, keypress_message
from callbridge.bots.assistant.script import SHIPPED_SCRIPT, ScriptBrain, ScriptError, load_script

SCRIPT = yaml.safe_load(SHIPPED_SCRIPT.read_text())
ANSWERS = {intent["name"]: " ".join(intent["answer"].split()) for intent in SCRIPT["intents"]}
FALLBACK = " ".join(SCRIPT["fallback"].split())


async def respond(brain: ScriptBrain, *messages: dict[str, str]) -> list[object]:
    return [item async for item in brain.respond(list(messages), [END_CALL])]


def said(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def brain() -> ScriptBrain:
    return ScriptBrain.from_file()


async def test_opening_hours_come_from_the_file(brain: ScriptBrain) -> None:
    reply = await respond(brain, said("What time do you open?"))
    assert reply == [ANSWERS["hours"]]
    assert "8 in the morning" in reply[0] and "Sunday" in reply[0]


@pytest.mark.parametrize("heard", [
    "what time will you open tomorrow",  # the words differ from every example
    "what time you open tomorrow.",  # Whisper drops "do"
    "Wen do you clothes on Saturday?",  # misheard words
    "ARE YOU OPEN ON SUNDAYS",
    "what are your opening ours",
])
async def test_hours_despite_transcription_errors(brain: ScriptBrain, heard: str) -> None:
    assert await respond(brain, said(heard)) == [ANSWERS["hours"]]


@pytest.mark.parametrize(("heard", "intent"), [
    ("Where are you located?", "address"),
    ("Is there parking nearby?", "address"),
    ("How much does a cleaning cost?", "prices"),
    ("I would like to welcome appointments for a cleaning.", "booking"),  # Whisper's "book an appointment"
    ("Can I book an apointment for next week", "booking"),
    ("can I book a time", "booking"),
    ("Do you take Delta Dental insurance?", "insurance"),
    ("My tooth is broken and it hurts", "emergency"),
    ("Do you do implants for kids?", "services"),
    ("Can I talk to a real person?", "human"),
    ("Thank you.", "thanks"),
])
async def test_intents(brain: ScriptBrain, heard: str, intent: str) -> None:
    assert await respond(brain, said(heard)) == [ANSWERS[intent]]


@pytest.mark.parametrize("heard", ["That's all, thanks, bye!", "Okay, goodbye.", "No, nothing else, bye.",
                                   "Goodbye, thank you.", "Thanks, bye."])
async def test_goodbye_ends_the_call(brain: ScriptBrain, heard: str) -> None:
    assert await respond(brain, said(heard)) == [ANSWERS["goodbye"], EndCallAction()]


async def test_no_end_call_when_the_tool_is_not_offered(brain: ScriptBrain) -> None:
    assert [item async for item in brain.respond([said("goodbye")], [])] == [ANSWERS["goodbye"]]


@pytest.mark.parametrize("heard", ["The weather is nice in Lisbon", "", "Hmm."])
async def test_fallback(brain: ScriptBrain, heard: str) -> None:
    assert await respond(brain, said(heard)) == [FALLBACK]


@pytest.mark.parametrize(("digit", "intent"), [("1", "hours"), ("2", "address"), ("3", "prices"), ("4", "booking"),
                                               ("5", "emergency"), ("0", "options")])
async def test_keypad_menu(brain: ScriptBrain, digit: str, intent: str) -> None:
    assert await respond(brain, keypress_message(digit)) == [ANSWERS[intent]]


async def test_keypad_hash_says_goodbye_and_unknown_keys_are_told(brain: ScriptBrain) -> None:
    assert await respond(brain, keypress_message("#")) == [ANSWERS["goodbye"], EndCallAction()]
    reply = await respond(brain, keypress_message("9"))
    assert reply == [" ".join(SCRIPT["unknown_key"].split())]


async def test_repeat_says_the_last_answer_again(brain: ScriptBrain) -> None:
    history = [said("where are you"), {"role": "assistant", "content": f"We're at 42 Harbor Street. {INTERRUPTED}"},
               said("sorry, can you repeat that?")]
    assert await respond(brain, *history) == ["We're at 42 Harbor Street."]
    assert await respond(brain, said("say that again")) == [ANSWERS["repeat"]]


def test_greeting_from_the_file(brain: ScriptBrain) -> None:
    assert brain.greeting is not None and brain.greeting.startswith("Thank you for calling Harbor Dental.")


def test_what_an_idle_caller_hears_is_in_the_file_and_optional(brain: ScriptBrain, tmp_path: Path) -> None:
    assert (brain.idle_prompt, brain.idle_goodbye) == (SCRIPT["idle_prompt"], SCRIPT["idle_goodbye"])
    assert brain.idle_prompt == "Are you still there?"
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump({"greeting": "Hi!", "fallback": "Sorry?",
                                    "intents": [{"name": "x", "keywords": ["bread"], "answer": "Bread."}]}))
    short = ScriptBrain.from_file(path)
    assert (short.idle_prompt, short.idle_goodbye) == (None, None), "left to the assistant's own lines"
    path.write_text("greeting: hi\nfallback: sorry\nidle_prompt: ''\nintents:\n  - {name: x, keywords: [a], answer: y}")
    with pytest.raises(ScriptError, match="'idle_prompt' must be a non-empty string"):
        load_script(path)


async def test_own_dialog_file(tmp_path: Path) -> None:
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump({
        "greeting": "Rosie's Bakery, hello!",
        "fallback": "Sorry, ask me about bread.",
        "menu": {"1": "bread"},
        "intents": [{"name": "bread", "keywords": ["bread", "sourdough", "loaf"],
                     "answer": "Sourdough is 6 dollars a loaf."}],
    }))
    brain = ScriptBrain.from_file(path)
    assert brain.greeting == "Rosie's Bakery, hello!"
    assert await respond(brain, said("do you have sourdough loaves")) == ["Sourdough is 6 dollars a loaf."]
    assert await respond(brain, keypress_message("1")) == ["Sourdough is 6 dollars a loaf."]
    assert await respond(brain, keypress_message("2")) == ["Sorry, ask me about bread."]


@pytest.mark.parametrize(("content", "complaint"), [
    ("greeting: [", "cannot read"),
    ("- just a list", "must be a mapping"),
    ("greeting: hi\nfallback: sorry\nintents: []", "'intents' must be a non-empty list"),
    ("greeting: hi\nfallback: sorry\nintents:\n  - name: x\n    answer: y", "needs keywords or examples"),
    ("greeting: hi\nfallback: sorry\nintents:\n  - name: x\n    keywords: [a]", "'answer' must be"),
    ("greeting: hi\nfallback: sorry\nmenu: {'1': nope}\nintents:\n  - {name: x, keywords: [a], answer: y}",
     "menu key 1 names no intent"),
])
def test_bad_dialog_files_are_refused_with_the_reason(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ScriptError, match=complaint) as caught:
        load_script(path)
    assert str(path) in str(caught.value)
