"""Offline token counts with the o200k encoding that bpe-openai ships (no download at run time)."""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any


@cache
def _encoding() -> Any:
    import warnings

    with warnings.catch_warnings():
        # bpe-openai loads its data with a deprecated importlib.resources call; harmless, and not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.get_encoding("o200k_base")


CHUNK = 200_000
"""Characters per piece: bpe-openai refuses inputs of about a million characters ("Input too long to encode
safely"), so a longer text is counted in pieces cut at white space; the sum differs from a whole count by at
most a token per cut."""


@lru_cache(maxsize=1024)
def count_tokens(text: str) -> int:
    """Tokens in `text` under o200k; an estimate for other providers' tokenizers. Any length is accepted, and
    the count is remembered: a phase's shared prefix (a rubric, a system prompt) is counted once."""
    if not text:
        return 0
    total, start = 0, 0
    while start < len(text):
        end = min(start + CHUNK, len(text))
        if end < len(text):
            space = text.rfind(" ", start + CHUNK // 2, end)
            end = space + 1 if space > start else end
        total += len(_encoding().encode(text[start:end], disallowed_special=()))
        start = end
    return total
