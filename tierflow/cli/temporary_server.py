"""Prefect's temporary server, started by tierflow in a session of its own, so that Ctrl-C reaches tierflow alone.

Without PREFECT_API_URL, Prefect starts a temporary server as a child process in tierflow's process group. A
terminal's Ctrl-C goes to the whole group, so it stopped the server too, mid-run; the client then spent about 7 s
on each queued event it could no longer deliver, and tierflow did not exit for minutes. Started here, the server
hears no Ctrl-C: the run's crash and its last events reach it, and Prefect's exit hook stops it after they have
(`kill` stops it at once). A server the user runs (PREFECT_API_URL) is left alone.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

_started: SubprocessASGIServer | None = None
"""The server `start` started, for `kill`."""


def start() -> SubprocessASGIServer | None:
    """Start the temporary server in its own session, unless PREFECT_API_URL names one; the server, or None.

    Prefect's clients ask `SubprocessASGIServer()` for the temporary server, and get the running one: this one.
    """
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None

    class OwnSessionServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            prefect_server.subprocess = _OwnSession(subprocess)  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = subprocess

    global _started
    server = OwnSessionServer()  # an instance Prefect already started in this process is returned as it is
    server.start()
    _started = server
    return server


def kill() -> None:
    """Stop the server `start` started at once (a second Ctrl-C), without waiting for it to finish writing."""
    process = _started.server_process if _started is not None else None
    if process is not None and process.poll() is None:
        process.kill()


class _OwnSession:
    """`subprocess`, except that `Popen` starts its process in a new session (and so a new process group)."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802
        return self._module.Popen(*args, start_new_session=True, preexec_fn=_dies_with_parent(), **kwargs)


def _dies_with_parent() -> Callable[[], None] | None:
    """On Linux, what makes the server get SIGTERM when tierflow dies without stopping it (SIGKILL, `timeout -s
    KILL`, a CI job cancelled): out of tierflow's process group, a group kill no longer reaches it. Elsewhere None.

    Linux sends it when the thread that started the server ends: `start` runs in the main thread, the last to end.
    The function is looked up before the fork, so the child runs no more than one C call before it execs."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)
