"""Test-set leakage by word n-gram overlap: a shared run of n words, or a short text equal to a whole document."""
from __future__ import annotations

from llmops.models.data.leakage import OverlapIndex, words

# 30 distinct words, and 30 others no document uses
DOC_WORDS = [f"alpha{i}" for i in range(30)]
OTHER = [f"omega{i}" for i in range(30)]
DOCUMENT = " ".join(DOC_WORDS)


def index(*documents: str, n: int = 13) -> OverlapIndex:
    return OverlapIndex(list(documents), n)


def test_words_ignore_case_punctuation_and_spacing():
    assert words("The  Quick,\tbrown FOX!\n(jumps) -- over... it's") == [
        "the", "quick", "brown", "fox", "jumps", "over", "it", "s"]
    assert words("  ...  ") == []


def test_a_text_sharing_a_13_word_run_with_a_document_overlaps():
    text = " ".join(OTHER[:5] + DOC_WORDS[7:20] + OTHER[5:10])  # 13 shared words in the middle
    assert index(DOCUMENT).overlaps(text)


def test_the_run_overlaps_whatever_its_case_punctuation_and_spacing():
    run = DOC_WORDS[3:16]
    disguised = "; ".join(w.upper() if i % 2 else w.capitalize() for i, w in enumerate(run))
    text = f"{OTHER[0]}!!  {disguised}\n\n  {OTHER[1]}?"
    assert index(DOCUMENT).overlaps(text)
    punctuated = index(", ".join(DOC_WORDS) + ".")  # the punctuation may be on the document's side too
    assert punctuated.overlaps(" ".join(OTHER[:3] + run))


def test_12_shared_words_do_not_overlap():
    text = " ".join(OTHER[:10] + DOC_WORDS[5:17] + OTHER[10:20])
    assert not index(DOCUMENT).overlaps(text)
    assert index(DOCUMENT, n=12).overlaps(text)  # n is the run length that counts


def test_shared_words_out_of_order_do_not_overlap():
    text = " ".join(reversed(DOC_WORDS))
    assert not index(DOCUMENT).overlaps(text)


def test_an_unrelated_text_does_not_overlap():
    idx = index(DOCUMENT, " ".join(OTHER[:20]))
    assert not idx.overlaps("a completely different sentence about gardening, weather and the price of tea today")
    assert not idx.overlaps("")


def test_a_short_text_overlaps_only_when_its_words_equal_a_whole_document():
    short_doc = "Reset your password from the settings page."  # 7 words, fewer than n
    idx = index(DOCUMENT, short_doc)
    assert idx.overlaps("reset YOUR password -- from the settings page")
    assert not idx.overlaps("Reset your password from the settings page, please")  # one word more
    assert not idx.overlaps("your password from the settings page")  # a part of it
    assert not idx.overlaps(" ".join(DOC_WORDS[:12]))  # 12 words of a longer document: not a whole document


def test_a_text_equal_to_a_whole_document_overlaps():
    idx = index(DOCUMENT)
    assert idx.overlaps(DOCUMENT.upper())


def test_documents_added_later_count():
    idx = index(DOCUMENT)
    text = " ".join(OTHER[:13])
    assert not idx.overlaps(text)
    idx.add(" ".join(OTHER))
    assert idx.overlaps(text)
