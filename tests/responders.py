"""Double 'models' for flow tests: they answer each structured request as tierflow's offline skills would."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, Reply


def schema_name(request: DoubleRequest) -> str | None:
    """The structure a request asks for: Anthropic's forced tool, OpenAI's json_schema name, or the title of the
    schema sent beside JSON mode or spelled out in the system prompt (servers without a JSON-schema mode)."""
    if request.forced_tool:
        return request.forced_tool
    fmt = request.body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("name")
    if isinstance(fmt.get("schema"), dict):
        return str(fmt["schema"].get("title", "")).lower() or None
    marker = "It must match this JSON schema:\n"
    if marker in request.system:
        schema, _ = json.JSONDecoder().raw_decode(request.system.split(marker, 1)[1])
        return str(schema.get("title", "")).lower() or None
    return None


def skilled(overrides: dict[str, Any] | None = None) -> Callable[[DoubleRequest], Reply | None]:
    """Answer like the offline skills, unless `overrides` names the schema (a dict answer, or a function)."""
    overrides = overrides or {}

    def responder(request: DoubleRequest) -> Reply | None:
        name = schema_name(request)
        if name is None:
            return None
        if name in overrides:
            answer = overrides[name]
            return answer(request) if callable(answer) else Reply(data=answer)
        return Reply(data=SKILLS[name](prompt_data(request.last_user_text)))

    return responder
