"""Token counts for inputs of any size: a 2,610-note week once crashed synthesis with "Input too long to encode
safely" from the tokenizer."""

from __future__ import annotations

from tierflow.core.tokens import CHUNK, _encoding, count_tokens


def test_inputs_over_a_million_characters_are_counted_without_crashing():
    for text in ("x" * 3_000_000, "学" * 1_200_000, "word " * 700_000):
        assert count_tokens(text) > 0


def test_a_long_text_counts_what_its_pieces_count_within_a_token_per_cut():
    piece = "Feedback closes the gap between current and desired performance. " * 3_000
    whole = piece * 8  # over several chunks
    cuts = len(whole) // (CHUNK // 2)
    assert abs(count_tokens(whole) - 8 * count_tokens(piece)) <= cuts + 8
    assert len(piece) < CHUNK and count_tokens(piece) == len(_encoding().encode(piece))  # short texts: exact
