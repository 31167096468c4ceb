"""Layers point one way: cli -> flows/tasks -> report/learn/flowkit -> core/vault/offline. The core never imports a
flow or task, and core and vault never import each other: what needs both is built above them (`tierflow.flowkit`)
and passed down."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOWER = ("core", "vault", "offline", "report", "learn", "testing", "flowkit")
"""Packages under tierflow/ that must not import tierflow.flows, tierflow.tasks or tierflow.cli."""
UPPER = ("tierflow.flows", "tierflow.tasks", "tierflow.cli")


def imported_modules(source: str) -> set[str]:
    """Every module a Python source imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def upward_imports(source: str) -> set[str]:
    return {m for m in imported_modules(source) if m.startswith(UPPER) or m in UPPER}


def lower_layer_files() -> list[Path]:
    return sorted(p for pkg in LOWER for p in (REPO / "tierflow" / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", lower_layer_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_lower_layers_never_import_flows_tasks_or_cli(path: Path) -> None:
    assert upward_imports(path.read_text(encoding="utf-8")) == set(), f"{path} imports upward"


def test_the_check_catches_a_deliberate_upward_import() -> None:
    """The same check, on a module that imports a task inside a function, as plan.py once did."""
    offending = "def plan():\n    from tierflow.tasks import collate\n    import tierflow.flows.reading_notes\n"
    assert upward_imports(offending) == {"tierflow.tasks", "tierflow.tasks.collate", "tierflow.flows.reading_notes"}
    assert upward_imports("from tierflow.core.calls import Caller\nimport json\n") == set()


FOUNDATION = ("tierflow.core.errors", "tierflow.core.clock", "tierflow.core.folders", "tierflow.core.commands")
"""Core modules that import nothing of tierflow's but errors, and that vault may use: its errors, the clock, the
one check of a vault folder, and the `tierflow ...` command lines messages print."""


def crossing_imports(source: str, package: str) -> set[str]:
    """What a module of `package` (core or vault) imports from the other, the foundation aside."""
    other = {"core": "tierflow.vault", "vault": "tierflow.core"}[package]
    return {
        m
        for m in imported_modules(source)
        if (m == other or m.startswith(other + ".")) and not m.startswith(FOUNDATION)
    }


@pytest.mark.parametrize(
    "path",
    sorted(p for pkg in ("core", "vault") for p in (REPO / "tierflow" / pkg).rglob("*.py")),
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_core_and_vault_never_import_each_other(path: Path) -> None:
    package = path.relative_to(REPO / "tierflow").parts[0]
    assert crossing_imports(path.read_text(encoding="utf-8"), package) == set(), f"{path} crosses into the other"


def test_the_check_catches_core_and_vault_importing_each_other() -> None:
    """The imports that once tied them: a run checking its vault with vault's helper, a vault folder reader
    building the call path, vault modules building core's checks."""
    assert crossing_imports("def start():\n    from tierflow.vault.notes import check_vault\n", "core") == {
        "tierflow.vault.notes",
        "tierflow.vault.notes.check_vault",
    }
    assert crossing_imports("from tierflow.core.calls import RunSettings, caller_for\n", "vault") >= {
        "tierflow.core.calls"
    }
    assert crossing_imports("from tierflow.core.checks import Check\n", "vault") == {
        "tierflow.core.checks",
        "tierflow.core.checks.Check",
    }
    assert crossing_imports("import tierflow.core.calls\n", "vault") == {"tierflow.core.calls"}
    foundation = "from tierflow.core.errors import VaultError\nfrom tierflow.core.folders import check_vault\n"
    assert crossing_imports(foundation, "vault") == set()


def test_every_lower_layer_package_exists() -> None:
    """A renamed package would silently drop out of the check above."""
    for pkg in LOWER:
        assert (REPO / "tierflow" / pkg / "__init__.py").is_file(), pkg


def _function_from(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"checkout_copy_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return getattr(module, name)


def test_a_flow_file_that_differs_from_the_installed_one_is_refused(tmp_path: Path) -> None:
    """A deployment started from another checkout must not mix its flow file with this install's tasks."""
    from tierflow.core.errors import TierflowError
    from tierflow.core.registry import check_same_install, flow_spec

    installed = Path(flow_spec("reading-notes").flow.fn.__code__.co_filename)
    same = tmp_path / "same" / "flows" / "reading_notes.py"
    same.parent.mkdir(parents=True)
    same.write_bytes(installed.read_bytes())
    (tmp_path / "same" / "pyproject.toml").write_text("")
    other = tmp_path / "other" / "flows" / "reading_notes.py"
    other.parent.mkdir(parents=True)
    other.write_text("def reading_notes():\n    return 'an older copy'\n")
    (tmp_path / "other" / "pyproject.toml").write_text("")

    check_same_install(_function_from(same, "reading_notes"), "reading-notes")  # an identical copy runs
    with pytest.raises(TierflowError, match=r"differs from the one in the installed tierflow .*pip install -e"):
        check_same_install(_function_from(other, "reading_notes"), "reading-notes")


def test_a_flow_with_no_file_is_refused_when_it_is_an_edited_copy_or_names_another_flow() -> None:
    """Code with no file (a notebook cell, `python -c`, exec) is not compared by its file, which it has not: a flow
    Prefect runs from its pickled bundle (`flow.serve()`, code named `<dynamic-code>`) keeps the installed code and
    runs, but an edited copy of a registered flow, or a flow whose begin_run gives another registered flow's name,
    slipped through unrefused."""
    import cloudpickle

    from tierflow.core.errors import TierflowError
    from tierflow.core.registry import check_same_install, flow_spec

    installed = flow_spec("reading-notes").flow.fn
    module = sys.modules[installed.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        pickled = cloudpickle.loads(cloudpickle.dumps(installed))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert pickled.__code__.co_filename == "<dynamic-code>"
    check_same_install(pickled, "reading-notes", "reading-notes")  # as Prefect runs a served flow: runs

    cell: dict = {}
    exec(compile("def reading_notes(vault):\n    return 'edited in a notebook'\n", "<ipython-input-3>", "exec"), cell)
    with pytest.raises(TierflowError, match=r"reading-notes flow defined in <ipython-input-3> \(code with no file"):
        check_same_install(cell["reading_notes"], "reading-notes", "reading-notes")
    with pytest.raises(TierflowError, match="gives the name of another registered flow, the reading-notes flow"):
        check_same_install(cell["reading_notes"], "reading-notes", "weekly-notes")
