"""Cut streamed text into sentences as it arrives, so speech can start before the whole reply is written.

A sentence ends at `.`, `!` or `?` (closing quotes or brackets may follow) once whitespace and a character
that is not lower case follow, or at a line break. "3.5", "e.g. this", "Dr. Lee" and "J. Smith" stay
whole. A sentence longer than CLAUSE_AFTER is cut at a comma, semicolon or colon (the last one within
CLAUSE_AFTER, else the first after), and one longer than HARD_LIMIT with no such mark at a space, so the
first words of a rambling reply are not held back. The cuts do not depend on how the text was chunked.
"""

from __future__ import annotations

import re

#: Words that end in a period without ending a sentence (lower case, without their final period).
ABBREVIATIONS = frozenset({
    "dr", "mr", "mrs", "ms", "prof", "st", "mt", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "no",
    "tel", "ave", "blvd", "rd", "inc", "ltd", "co", "dept", "fig", "a.m", "p.m",
})
#: A sentence longer than this is cut at a clause mark.
CLAUSE_AFTER = 80
#: A sentence longer than this with no clause mark is cut at a space.
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
        end = _sentence_end(text)
        piece = text if end is None else text[:end]
        if len(piece) > CLAUSE_AFTER:
            marks = [mark.end() for mark in _CLAUSE.finditer(piece) if mark.end() >= CLAUSE_AFTER // 4]
            if marks:
                early = [mark for mark in marks if mark <= CLAUSE_AFTER]
                return early[-1] if early else marks[0]
        if len(piece) > HARD_LIMIT:
            space = piece.rfind(" ", 0, HARD_LIMIT)
            return space if space > 0 else HARD_LIMIT
        return end


def _sentence_end(text: str) -> int | None:
    """Where the first complete sentence (or line) of `text` ends, if one is complete."""
    line_break = text.find("\n")
    for end in _END.finditer(text):
        if 0 <= line_break < end.start():
            break
        if _ends_sentence(text, end):
            return end.end()
    return line_break + 1 if line_break >= 0 else None
