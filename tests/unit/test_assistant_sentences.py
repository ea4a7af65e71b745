"""The sentence splitter: sentences out as soon as they are complete, whatever the deltas' boundaries."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.bots.assistant.sentences import CLAUSE_AFTER, HARD_LIMIT, SentenceSplitter

REPLY = ("Hello there! We open at 8 a.m. on weekdays. Dr. Lee charges 3.5 percent less, e.g. for a cleaning. "
         "Is that all? Great.")
SENTENCES = ["Hello there!", "We open at 8 a.m. on weekdays.",
             "Dr. Lee charges 3.5 percent less, e.g. for a cleaning.", "Is that all?", "Great."]


def split(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    out = [sentence for delta in deltas for sentence in splitter.feed(delta)]
    if (rest := splitter.flush()) is not None:
        out.append(rest)
    return out


def test_whole_text() -> None:
    assert split([REPLY]) == SENTENCES


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_deltas_that_cut_words_and_marks(size: int) -> None:
    assert split([REPLY[i : i + size] for i in range(0, len(REPLY), size)]) == SENTENCES


@given(st.lists(st.integers(min_value=1, max_value=len(REPLY)), max_size=20))
def test_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(REPLY)]
    assert split([REPLY[a:b] for a, b in itertools.pairwise(bounds)]) == SENTENCES


LONG = ("We offer checkups, cleanings, fillings, crowns, implants, whitening and clear braces for the whole "
        "family, and we see children from their first tooth. " + " ".join(["very"] * 60) + " long. Done.")


@given(st.lists(st.integers(min_value=1, max_value=len(LONG)), max_size=30))
def test_long_sentences_cut_the_same_whatever_the_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(LONG)]
    assert split([LONG[a:b] for a, b in itertools.pairwise(bounds)]) == split([LONG])


def test_a_sentence_comes_out_as_soon_as_the_next_one_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("We're open until six.") == []  # "six." may still be "six.5"
    assert splitter.feed(" ") == []
    assert splitter.feed("Any") == ["We're open until six."]
    assert splitter.flush() == "Any"
    assert splitter.flush() is None


def test_not_split() -> None:
    for text in ["It costs 3.5 dollars.", "Ask Dr. Smith or Mrs. Jones today.", "Call J. R. Smith now.",
                 "Bring something, e.g. a book.", "We open at 9 a.m. and close at 5 p.m. daily."]:
        assert split([text]) == [text]
    assert split(["Wait... What now?"]) == ["Wait...", "What now?"]


def test_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert split(['He said "Stop." Then he left.']) == ['He said "Stop."', "Then he left."]
    assert split(["(We are closed.) See you."]) == ["(We are closed.)", "See you."]


def test_line_breaks_end_a_piece() -> None:
    assert split(["Monday: 8 to 6\nSaturday: 9 to 1\n\nSunday closed"]) == [
        "Monday: 8 to 6", "Saturday: 9 to 1", "Sunday closed"]


def test_long_sentence_cut_at_a_clause() -> None:
    text = ("We offer checkups, cleanings, fillings, crowns, implants, whitening and clear braces for the whole "
            "family, and we see children from their first tooth")
    pieces = split([text])
    assert len(pieces) > 1
    assert " ".join(pieces) == text
    assert all(piece.endswith(",") for piece in pieces[:-1])
    assert len(pieces[0]) <= CLAUSE_AFTER + 10


def test_short_sentence_with_commas_not_cut() -> None:
    assert split(["Yes, of course, we can."]) == ["Yes, of course, we can."]


def test_run_on_text_without_any_mark_is_cut_at_a_space() -> None:
    words = " ".join(["word"] * 100)
    pieces = split([words])
    assert len(pieces) >= 2
    assert all(len(piece) <= HARD_LIMIT for piece in pieces)
    assert " ".join(pieces) == words


def test_empty_and_blank() -> None:
    assert split([]) == []
    assert split(["", "   ", "\n"]) == []
