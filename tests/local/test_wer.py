"""The word error rate helper (local.wer) that the speech tests and benchmarks use."""

import pytest

from local.wer import normalise, word_error_rate


def test_normalise_ignores_case_punctuation_and_accents():
    assert normalise("A small Café, in Paris!") == ["a", "small", "cafe", "in", "paris"]
    assert normalise("don't stop - well-known") == ["don't", "stop", "well", "known"]


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("a photo of an astronaut", "A photo of an astronaut.", 0.0),
        ("a photo of an astronaut", "the photo and an astronaut", 0.4),  # two substitutions
        ("a red apple", "a apple", 1 / 3),  # a deletion
        ("a red apple", "a big red apple", 1 / 3),  # an insertion
        ("a lighthouse in a storm", "a light house in a storm", 0.4),  # one substitution, one insertion
        ("a cat", "", 1.0),
        ("", "", 0.0),
    ],
)
def test_word_error_rate_counts_edits_per_reference_word(reference, hypothesis, expected):
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_words_heard_in_silence_are_all_errors():
    assert word_error_rate("", "thank you") == 1.0
