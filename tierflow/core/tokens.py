"""Offline token counts with the o200k encoding that bpe-openai ships (no download at run time)."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _encoding() -> Any:
    import warnings

    with warnings.catch_warnings():
        # bpe-openai loads its data with a deprecated importlib.resources call; harmless, and not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.get_encoding("o200k_base")


def count_tokens(text: str) -> int:
    """Tokens in `text` under o200k; an estimate for other providers' tokenizers."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))
