"""The offline model: deterministic and extractive, for demos and tests. It calls no network.

Everything it produces is labelled by its provider kind (`offline:` model ids), and the notes it drafts
say so. Structured requests are answered by the *skill* for the schema name (`tierflow.offline.skills`), so
the offline model never needs to understand free text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tierflow.core.config import ProviderConfig
from tierflow.core.errors import MalformedResponse
from tierflow.core.providers import BatchItemResult, Completion, Request
from tierflow.core.tokens import count_tokens
from tierflow.core.usage import Usage
from tierflow.offline.skills import SKILLS

_BATCHES: dict[str, list[BatchItemResult]] = {}
_KEYS: dict[str, str] = {}
"""tierflow's batch key -> offline batch id."""

DATA_PATTERN = re.compile(r"<data>\s*(.*?)\s*</data>", re.DOTALL)
"""Prompts carry their inputs as JSON inside <data> fences; the offline skills read them from there."""


def prompt_data(prompt: str) -> dict[str, Any]:
    """The JSON inside the prompt's <data> fence."""
    match = DATA_PATTERN.search(prompt)
    if not match:
        return {}
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


class OfflineProvider:
    kind = "offline"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config

    def complete(self, request: Request) -> Completion:
        if request.schema is not None:
            answer = SKILLS.get(request.schema_name)
            if answer is None:
                raise MalformedResponse(
                    self.name, request.model, f"the offline model has no skill for {request.schema_name!r}"
                )
            data: dict[str, Any] | None = answer(prompt_data(request.prompt))
            text = json.dumps(data, ensure_ascii=False)
        else:
            data = None
            text = _extract(request.prompt, request.max_output_tokens)
        output_tokens = min(count_tokens(text), request.max_output_tokens)
        return Completion(
            text=text,
            data=data,
            usage=Usage(input_tokens=self.count_tokens(request), output_tokens=output_tokens),
            model=request.model,
            response_id=None,
            stop_reason="end_turn",
            extra={"offline": True},
        )

    def submit_batch(self, requests: dict[str, Request], *, key: str = "") -> str:
        """The offline model answers a batch at once; results wait in memory for collection."""
        batch_id = f"offline-batch-{uuid.uuid4().hex[:12]}"
        _BATCHES[batch_id] = [BatchItemResult(cid, "succeeded", self.complete(r)) for cid, r in requests.items()]
        if key:
            _KEYS[key] = batch_id
        return batch_id

    def find_batch(self, key: str, custom_ids: list[str], since_s: float, known: set[str]) -> str | None:
        """Offline batches live in this process's memory: one lost with an earlier process is gone."""
        found = _KEYS.get(key)
        return found if found not in known else None

    def batches_since(self, since_s: float) -> set[str]:
        """Matched by tierflow's key (`find_batch`): no other batch is taken for one."""
        return set()

    def batch_ended(self, batch_id: str) -> tuple[bool, str]:
        return True, "ended"

    def batch_results(self, batch_id: str, requests: dict[str, Request]) -> list[BatchItemResult]:
        results = _BATCHES.get(batch_id, [])
        seen = {r.custom_id for r in results}
        return results + [BatchItemResult(cid, "expired") for cid in requests if cid not in seen]

    def count_tokens(self, request: Request) -> int:
        return count_tokens(request.system) + count_tokens(request.cache_prefix) + count_tokens(request.prompt)


def _extract(prompt: str, max_tokens: int) -> str:
    """The first sentences of the prompt's content, up to a tenth of the output allowance."""
    source = prompt_text(prompt) if DATA_PATTERN.search(prompt) else prompt
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(source.split()))
    picked: list[str] = []
    budget = max(16, max_tokens // 10)
    for sentence in sentences:
        if count_tokens(" ".join([*picked, sentence])) > budget:
            break
        picked.append(sentence)
    return "[offline extractive model] " + (" ".join(picked) or source[:200])


def prompt_text(prompt: str) -> str:
    """All string values inside the prompt's <data> fence, in order."""
    values: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(prompt_data(prompt))
    return " ".join(values)
