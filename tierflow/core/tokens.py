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


@lru_cache(maxsize=1024)
def count_tokens(text: str) -> int:
    """Tokens in `text` under o200k; an estimate for other providers' tokenizers. Remembered: a phase's
    shared prefix (a rubric, a system prompt) is counted once, not once per call."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))
