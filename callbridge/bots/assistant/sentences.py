"""Cut streamed text into sentences as it arrives, so speech can start before the whole reply is written.

A sentence ends at `.`, `!` or `?` (closing quotes or brackets may follow) once whitespace and a character
that is not lower case follow, or at a line break. "3.5", "e.g. this", "Dr. Lee" and "J. Smith" stay
whole. A long sentence is cut at its last comma, semicolon or colon, and an overlong run with no
punctuation at its last space, so the first words of a rambling reply are not held back.
"""

from __future__ import annotations

import re

#: Words that end in a period without ending a sentence (lower case, without their final period).
ABBREVIATIONS = frozenset({
    "dr", "mr", "mrs", "ms", "prof", "st", "mt", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "no",
    "tel", "ave", "blvd", "rd", "inc", "ltd", "co", "dept", "fig", "a.m", "p.m",
})
#: Past this many characters, a sentence with no end yet is cut at its last clause mark.
CLAUSE_AFTER = 80
#: Past this many characters with no clause mark either, it is cut at its last space.
HARD_LIMIT = 200

_END = re.compile(r"""[.!?]+["')\]]*(?=\s+\S)""")
_CLAUSE = re.compile(r"[,;:](?=\s)")


def _ends_sentence(text: str, end: re.Match[str]) -> bool:
    if text[end.end():].lstrip()[0].islower():
        return False
    if text[end.start()] != ".":
        return True
    before = text[: end.start()].split()
    word = before[-1].lstrip("\"'([").lower() if before else ""
    return not (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()))


class SentenceSplitter:
    """Feed text deltas; get back each sentence once it is complete; `flush()` the rest at the end."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        sentences: list[str] = []
        while (cut := self._next_cut()) is not None:
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str | None:
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None

    def _next_cut(self) -> int | None:
        text = self._buffer
        line_break = text.find("\n")
        for end in _END.finditer(text):
            if 0 <= line_break < end.start():
                break
            if _ends_sentence(text, end):
                return end.end()
        if line_break >= 0:
            return line_break + 1
        if len(text) > CLAUSE_AFTER:
            clauses = [mark.end() for mark in _CLAUSE.finditer(text) if mark.end() >= CLAUSE_AFTER // 4]
            if clauses:
                return clauses[-1]
        if len(text) > HARD_LIMIT:
            space = text.rfind(" ", 0, HARD_LIMIT)
            return space if space > 0 else HARD_LIMIT
        return None
