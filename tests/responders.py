"""Double 'models' for flow tests: they answer each structured request as tierflow's offline skills would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, Reply


def schema_name(request: DoubleRequest) -> str | None:
    """The structure a request asks for: Anthropic's forced tool, or OpenAI's json_schema name."""
    if request.forced_tool:
        return request.forced_tool
    fmt = request.body.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("name")


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
