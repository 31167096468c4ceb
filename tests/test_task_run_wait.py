"""The end-of-run wait for Prefect's temporary server to record a run's task runs, before tierflow stops it."""

from __future__ import annotations

import threading
import time
import uuid

from prefect import task
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Running

from tierflow.cli.runner import wait_for_task_run_records

PAGE = 200
"""Task runs per request that a Prefect server returns (PREFECT_SERVER_API_DEFAULT_LIMIT)."""


def test_the_wait_sees_past_the_first_page_of_a_runs_task_runs(prefect_harness, monkeypatch):
    """A run of more than 200 task runs: the wait read one page of them, and ended while a task run past it was
    still running (its record then lost when the temporary server stopped)."""
    run_id = uuid.uuid4().hex
    tags = [f"tierflow-run:{run_id}"]

    @task(tags=tags)
    def step() -> None: ...

    with get_client(sync_client=True) as client:
        for i in range(PAGE + 4):
            client.create_task_run(step, None, str(i), state=Completed())
        # The lowest id: last in the server's order (id, descending), past the first page.
        running = client.create_task_run(step, None, "last", id=uuid.UUID(int=1), state=Running())

    main, real_sleep, sleeps, finished = threading.get_ident(), time.sleep, [], []

    def sleep(seconds: float) -> None:
        """The wait's pause between polls: the running task run finishes at the second one."""
        if threading.get_ident() == main:
            sleeps.append(seconds)
            if len(sleeps) == 2:
                with get_client(sync_client=True) as client:
                    client.set_task_run_state(running.id, Completed(), force=True)
                finished.append(True)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    # No PREFECT_API_URL: the harness's server is Prefect's temporary one, which the wait is for.
    with temporary_settings(updates={PREFECT_API_URL: None}):
        wait_for_task_run_records(run_id, patience=600)
    assert finished, f"the wait ended after {len(sleeps) + 1} polls with a task run still running"
