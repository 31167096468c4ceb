"""Test helpers: a local HTTP double of the Anthropic and OpenAI APIs (see ``tierflow.testing.double``).

Names are loaded lazily so that ``python -m tierflow.testing.double`` runs the module cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.testing.double import (
        NO_USAGE,
        DoubleRequest,
        NoUsage,
        ProviderDouble,
        Reply,
        Responder,
        Together,
        count_tokens,
        default_text,
        example_from_schema,
    )

__all__ = [
    "NO_USAGE",
    "DoubleRequest",
    "NoUsage",
    "ProviderDouble",
    "Reply",
    "Responder",
    "Together",
    "count_tokens",
    "default_text",
    "example_from_schema",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tierflow.testing.double"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
