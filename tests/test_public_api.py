"""The public API (`from tierflow import ...`) and docs/your-own-flow.md, whose code runs here as written."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import frontmatter
import pytest
from conftest import stopped

import tierflow
from tierflow.core.ledger import Ledger
from tierflow.vault.links import VaultNames

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "your-own-flow.md"


def doc_code() -> str:
    """The first Python block of docs/your-own-flow.md, exactly as written."""
    return re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL).group(1)


def test_every_public_name_exists_and_import_tierflow_stays_cheap() -> None:
    for name in tierflow.__all__:
        assert getattr(tierflow, name) is not None, name
    with pytest.raises(AttributeError):
        tierflow.no_such_name  # noqa: B018
    heavy = "('prefect', 'anthropic', 'openai', 'sqlalchemy')"
    probe = f"import sys, tierflow; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_public_name_is_taken_by_a_subpackage_once_that_is_imported() -> None:
    """Importing `tierflow.X` sets the attribute X of `tierflow` to that module: a public name X would then be the
    module, as `templates` was once the call path had read a prompt from the package `tierflow.templates`, for a
    flow imported after that."""
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    children = {p.split(".")[1] for p in packages if p.count(".") == 1}
    assert "flows" in children and not children & set(tierflow.__all__), children & set(tierflow.__all__)
    probe = (
        "from importlib.resources import files; [files(f'tierflow.{c}') for c in " + repr(sorted(children)) + "]; "
        "from tierflow import templates; print(callable(templates))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


def test_every_package_of_tierflow_is_in_the_wheel() -> None:
    """pyproject.toml lists its packages by hand: one left out is missing from an installed (not editable) tierflow,
    as `tierflow.flowkit` was, so that `from tierflow import read_folder` (and every flow's drafting task) failed
    with "No module named 'tierflow.flowkit'" on a worker that installed tierflow, though not in a checkout."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tierflow").rglob("__init__.py")}
    assert found - listed == set()


def test_the_public_api_lives_below_the_flows_and_tasks() -> None:
    """tierflow/__init__.py sits in the core layers: it must not reach up into a flow, a task or the CLI."""
    tree = ast.parse((REPO / "tierflow" / "__init__.py").read_text(encoding="utf-8"))
    where = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_WHERE"
    )
    assert set(where) == set(tierflow.__all__)
    upward = {n: m for n, m in where.items() if m.startswith(("tierflow.flows", "tierflow.tasks", "tierflow.cli"))}
    assert upward == {}


def test_all_is_exactly_what_the_docs_list_and_the_docs_import_only_from_it() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("## The public API", 1)[1]
    listed = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert listed == set(tierflow.__all__)
    imports = [n for n in ast.walk(ast.parse(doc_code())) if isinstance(n, ast.ImportFrom)]
    assert {n.module for n in imports} == {"tierflow"}, "the doc's flow imports from tierflow alone (and stdlib json)"
    assert {a.name for n in imports for a in n.names} <= set(tierflow.__all__)


@pytest.mark.usefixtures("prefect_harness")
def doc_module(tmp_path: Path) -> object:
    """The doc's flow code, as written, imported as a module of its own."""
    module_file = tmp_path / "triage_from_doc.py"
    module_file.write_text(doc_code(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("triage_from_doc", module_file)
    triage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(triage)  # type: ignore[union-attr]
    return triage


def inbox_vault(tmp_path: Path) -> Path:
    """A vault with three notes in `Inbox/`, of three lengths (so three decisions), their times pinned."""
    vault = tmp_path / "vault"
    inbox = vault / "Inbox"
    inbox.mkdir(parents=True)
    (inbox / "Long read.md").write_text("---\ntitle: Long read\n---\n\n" + "A careful argument. " * 20)
    (inbox / "Middling.md").write_text("---\ntitle: Middling\n---\n\nA few lines on rubric design, worth a look.\n")
    (inbox / "Stub.md").write_text("---\ntitle: Stub\n---\n\nTODO\n")
    for n, path in enumerate(sorted(inbox.iterdir())):
        os.utime(path, (1_763_000_000 + n, 1_763_000_000 + n))
    return vault


def test_the_doc_flow_runs_as_written_and_writes_its_triage_note(tmp_path: Path) -> None:
    code = doc_code()
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) < 50, "the doc promises a flow in under 50 lines of code"
    assert len(code.splitlines()) < 50, "under 50 lines even counting blank lines and comments"
    assert f"in {len(lines)} lines of code" in DOC.read_text(encoding="utf-8")
    triage = doc_module(tmp_path)
    vault = inbox_vault(tmp_path)
    # A name no wikilink can hold: `[[Inbox/C# in CS1 #teaching.md]]` would link a heading of `Inbox/C`.
    hashes = vault / "Inbox" / "C# in CS1 #teaching.md"
    hashes.write_text("---\ntitle: C# in CS1\n---\n\nWhy we teach C# first, for the #teaching group.\n")
    os.utime(hashes, (1_763_000_010, 1_763_000_010))

    summary = triage.reading_triage(vault=str(vault))

    assert not summary.failed and not summary.halted
    note = frontmatter.load(vault / "Triage" / "Reading triage.md")
    sections = {s.split("\n", 1)[0]: s for s in note.content.split("\n## ")[1:]}
    assert note.content.startswith("[offline extractive model]")  # the summary: plain text at `high`
    assert "[[Long read]]" in sections["read-now"]
    assert "[[Middling]]" in sections["later"]
    assert "[[Stub]]" in sections["skip"]
    names = VaultNames.scan(vault)
    assert "- [C# in CS1 #teaching](Inbox/C%23%20in%20CS1%20%23teaching.md): " in sections["later"]
    assert names.problems(note.content) == []
    assert [w.message for w in summary.written] == [""]  # every link written as a link
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert sorted((r["phase"], r["complexity"], r["tier"]) for r in rows) == [
        ("collate", "low", "light"),
        ("collate", "low", "light"),
        ("collate", "low", "light"),
        ("collate", "low", "light"),
        ("synthesise", "high", "deep"),
    ]
    assert (vault / summary.report.path).is_file()


def test_the_doc_flow_pays_for_no_summary_when_every_triage_fails(tmp_path: Path) -> None:
    """A bug after the triage's answer fails every item: the phase fails and the doc's flow, as tierflow's own
    flows do, starts no summary of nothing. The report says why."""
    from prefect import task

    triage = doc_module(tmp_path)
    answer = triage.triage.fn

    @task
    def triage_then_a_bug(settings, note):  # noqa: ANN001, ANN202
        answer(settings, note)  # the answer is paid for, then the task's own code fails
        raise KeyError("decision")

    triage.triage = triage_then_a_bug
    vault = inbox_vault(tmp_path)
    summary = stopped(triage.reading_triage, vault=str(vault))  # its flow run is Failed, with the summary

    assert summary.failed and "collate failed: no item finished; all 3 failed (the first: KeyError: 'decision')" in (
        summary.failed
    )
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert sorted(r["phase"] for r in rows) == ["collate", "collate", "collate"]  # no synthesise
    assert not (vault / "Triage").exists()
    assert "all 3 failed" in (vault / summary.report.path).read_text(encoding="utf-8")


def test_the_doc_flow_writes_a_models_link_to_no_note_as_text_and_reports_it(tmp_path: Path) -> None:
    """The summary a model wrote links a note nobody wrote: the note is written with that link as text and the run
    ends with its report, which says so; before, the whole run died after every phase was paid, with no report."""
    from prefect import task

    triage = doc_module(tmp_path)
    answer = triage.summarise.fn

    @task
    def summary_with_a_dangling_link(settings, verdicts):  # noqa: ANN001, ANN202
        return answer(settings, verdicts) + " See [[Nonexistent note]]."

    triage.summarise = summary_with_a_dangling_link
    vault = inbox_vault(tmp_path)
    summary = triage.reading_triage(vault=str(vault))

    assert not summary.failed and not summary.halted
    note = frontmatter.load(vault / "Triage" / "Reading triage.md")
    assert "See Nonexistent note." in note.content and "[[Nonexistent note]]" not in note.content
    assert "[[Long read]]" in note.content  # the links that resolve stay links
    (written,) = summary.written
    assert written.message == "written as plain text, not as links: [[Nonexistent note]] links to no note in the vault"
    report = (vault / summary.report.path).read_text(encoding="utf-8")
    assert "Nonexistent note links to no note in the vault" in report


def test_read_folder_reads_a_window_leaves_out_what_tierflow_wrote_and_refuses_to_leave_the_vault(
    tmp_path: Path,
) -> None:
    from datetime import date

    from tierflow import RunSettings, VaultError, read_folder

    vault = tmp_path / "vault"
    inbox = vault / "Inbox" / "sub"
    inbox.mkdir(parents=True)
    (inbox / "Dated.md").write_text("---\ntitle: A dated note\ndate: 2026-11-17\n---\n\nBody.\n")
    (inbox / "Undated.md").write_text("No front-matter.\n")
    os.utime(inbox / "Undated.md", (1_767_000_000, 1_767_000_000))  # 2025-12-29, outside the window
    (inbox / "Ours.md").write_text("---\ndate: 2026-11-18\ntierflow_run: r1\n---\n\nWritten by tierflow.\n")
    (vault / "Elsewhere.md").write_text("---\ndate: 2026-11-18\n---\n\nNot in the folder.\n")
    settings = RunSettings(vault=str(vault), run_id="t", flow="t")

    window = read_folder(settings, "Inbox", since=date(2026, 11, 16), until=date(2026, 11, 22))
    assert [(n.path, n.title, n.link, n.date) for n in window] == [
        ("Inbox/sub/Dated.md", "A dated note", "Dated", date(2026, 11, 17))
    ]
    everything = read_folder(settings, "Inbox", include_tierflow=True)
    assert [n.path for n in everything] == ["Inbox/sub/Dated.md", "Inbox/sub/Ours.md", "Inbox/sub/Undated.md"]
    assert [n.by_tierflow for n in everything] == [False, True, False]
    with pytest.raises(VaultError, match="leads out of the vault"):
        read_folder(settings, "../")
    with pytest.raises(VaultError, match="is not a folder of the vault"):
        read_folder(settings, "Missing")


def test_writer_for_never_overwrites_or_shadows_a_note_a_person_wrote(tmp_path: Path) -> None:
    from tierflow import RunSettings, writer_for

    vault = tmp_path / "vault"
    (vault / "Out").mkdir(parents=True)
    (vault / "Notes").mkdir()
    (vault / "Out" / "Mine.md").write_text("my words\n")
    (vault / "Notes" / "Taken.md").write_text("another note of mine\n")
    writer = writer_for(RunSettings(vault=str(vault), run_id="t", flow="t"), "Out")

    kept = writer.write("Mine", {"title": "Mine"}, "tierflow's words")
    assert (vault / "Out" / "Mine.md").read_text() == "my words\n"
    assert kept.action == "kept-user-edit" and kept.path.startswith("Out/Mine (tierflow 2026-11-18")
    apart = writer.write("Taken", {"title": "Taken"}, "tierflow's words")
    assert apart.path == "Out/Taken (2).md", "a new note never takes a name another note has anywhere in the vault"


def test_writer_for_writes_a_link_to_no_single_note_as_text_and_says_so(tmp_path: Path) -> None:
    """A model's `[[link]]` to a note that does not exist (or to two notes of one name) is written as its text, with
    a warning in the result (the console and the run report show it), not refused after the run has paid."""
    from tierflow import RunSettings, writer_for

    vault = tmp_path / "vault"
    for folder in ("Notes", "Notes/2025", "Out"):
        (vault / folder).mkdir(parents=True, exist_ok=True)
    (vault / "Notes" / "Real.md").write_text("a note\n")
    (vault / "Notes" / "Twin.md").write_text("one\n")
    (vault / "Notes" / "2025" / "Twin.md").write_text("two\n")
    writer = writer_for(RunSettings(vault=str(vault), run_id="t", flow="t"), "Out")

    body = "See [[Real]], [[Nonexistent note|a note]], [[Twin]] and `[[In code]]`."
    result = writer.write("Digest", {"title": "Digest", "related": ["[[Nowhere]]", "[[Real]]"]}, body)
    post = frontmatter.load(vault / "Out" / "Digest.md")
    assert result.action == "created" and post.content == "See [[Real]], a note, Twin and `[[In code]]`."
    assert post["related"] == ["Nowhere", "[[Real]]"]
    assert result.message == (
        "written as plain text, not as links: [[Nowhere]] links to no note in the vault; [[Nonexistent note]] links "
        "to no note in the vault; [[Twin]] is ambiguous: it matches Notes/2025/Twin.md, Notes/Twin.md"
    )
    assert VaultNames.scan(vault).problems((vault / "Out" / "Digest.md").read_text()) == []


def test_the_writers_refusal_says_what_is_wrong_with_each_link_and_what_to_do(tmp_path: Path) -> None:
    """tierflow's own flows write with the final guard on: a link to no note is not "notes that share a name"."""
    from tierflow import NoteWriter, VaultError

    vault = tmp_path / "vault"
    for folder in ("Notes/2025", "Out"):
        (vault / folder).mkdir(parents=True, exist_ok=True)
    (vault / "Notes" / "Twin.md").write_text("one\n")
    (vault / "Notes" / "2025" / "Twin.md").write_text("two\n")
    writer = NoteWriter(vault, "Out", names=VaultNames.scan(vault))
    with pytest.raises(VaultError) as dangling:
        writer.write("Digest", {"title": "Digest"}, "See [[Nonexistent note]].")
    said = str(dangling.value)
    assert "Out/Digest.md was not written: [[Nonexistent note]] links to no note in the vault" in said, said
    assert "create that note, or write the name without [[ ]]" in said and "share a name" not in said, said
    with pytest.raises(VaultError) as ambiguous:
        writer.write("Digest", {"title": "Digest"}, "See [[Twin]].")
    said = str(ambiguous.value)
    assert "[[Twin]] is ambiguous: it matches Notes/2025/Twin.md, Notes/Twin.md" in said
    assert "rename the notes that share a name, or link one by its path" in said and "create that note" not in said
    assert not (vault / "Out" / "Digest.md").exists()


def test_a_missing_template_is_a_tierflow_error_naming_the_folders_searched(tmp_path: Path) -> None:
    from jinja2 import TemplateNotFound

    vault = tmp_path / "vault"
    vault.mkdir()
    env = tierflow.templates(tierflow.RunSettings(vault=str(vault), run_id="t", flow="mine"))
    for name, hint in (("notes/nope.md.j2", "Check the name."), ("notes/run-reprt.md.j2", "'notes/run-report.md.j2'")):
        with pytest.raises(tierflow.TierflowError) as caught:
            env.get_template(name)
        said = str(caught.value)
        assert f"no template {name!r}" in said and hint in said, said
        assert f"{vault / 'Templates' / 'tierflow'}/ (the vault's overrides" in said
        assert f"tierflow's bundled templates ({REPO / 'templates'}/)" in said
        assert "copy it into the vault's override folder" in said
        assert isinstance(caught.value, TemplateNotFound)  # code catching Jinja2's own error still does


def test_a_template_typo_names_the_variable_and_the_template_file_even_through_tojson(tmp_path: Path) -> None:
    """Every bundled prompt passes its data through `tojson`: a typo there must name the variable (it said "Object
    of type StrictUndefined is not JSON serializable"), the template file and its line, and the names it was given."""
    from jinja2 import TemplateError

    vault = tmp_path / "vault"
    override = vault / "Templates" / "tierflow" / "prompts" / "mine.j2"
    override.parent.mkdir(parents=True)
    override.write_text("<data>\n{{ dta | tojson }}\n</data>\n", encoding="utf-8")
    env = tierflow.templates(tierflow.RunSettings(vault=str(vault), run_id="t", flow="mine"))
    for template, given in (("prompts/mine.j2", {"data": {"a": 1}}), ("prompts/mine.j2", {})):
        with pytest.raises(tierflow.TierflowError) as caught:
            env.get_template(template).render(**given)
        said = str(caught.value)
        assert f"the template {override}, line 2, does not render: 'dta' is undefined" in said, said
        assert ("Did you mean 'data'?" in said) == bool(given), said
        assert "It overrides tierflow's own prompts/mine.j2" not in said  # tierflow has none of that name
        assert isinstance(caught.value, TemplateError)  # code catching Jinja2's own error still does
    # Inside a value too: an undefined variable in a dict or list is named, not "not JSON serializable".
    with pytest.raises(tierflow.TierflowError, match="'dta' is undefined"):
        env.from_string("{{ {'notes': [dta]} | tojson }}").render()
    with pytest.raises(TypeError, match="not JSON serializable"):  # a value JSON cannot hold is still refused
        env.from_string("{{ x | tojson }}").render(x=object())
    # A vault's override of a bundled template says so, and how to go back to tierflow's own.
    collate = vault / "Templates" / "tierflow" / "prompts" / "collate" / "note.j2"
    collate.parent.mkdir(parents=True)
    collate.write_text("x {{ source.titel | tojson }}\n", encoding="utf-8")
    with pytest.raises(tierflow.TierflowError) as caught:
        env.get_template("prompts/collate/note.j2").render(source={"title": "A"}, data={}, max_claims=3)
    said = str(caught.value)
    assert f"the template {collate}, line 1, does not render: 'dict object' has no attribute 'titel'" in said, said
    assert "It overrides tierflow's own prompts/collate/note.j2: correct it, or delete it to use tierflow's." in said


def type_checking_imports() -> dict[str, tuple[str, str]]:
    """What tierflow/__init__.py imports under `if TYPE_CHECKING:`, as type checkers and IDEs read it: each name to
    its module and the name it is imported as."""
    tree = ast.parse((REPO / "tierflow" / "__init__.py").read_text(encoding="utf-8"))
    blocks = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    return {
        alias.name: (node.module or "", alias.asname or "")
        for block in blocks
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_type_checkers_see_every_public_name_as_what_it_is() -> None:
    """Every name came through the module's `__getattr__` alone, so mypy and pyright saw each as Any
    (`reveal_type(Phase("collate", "low"))` was Any) and an IDE completed nothing; and no `py.typed` said the
    package is typed."""
    import tomllib
    from importlib import import_module

    imported = type_checking_imports()
    where = {name: module for name, (module, _) in imported.items()}
    assert where == {name: tierflow._WHERE[name] for name in tierflow.__all__}
    # `X as X`: an explicit re-export, which mypy's strict mode (no implicit re-export) needs.
    assert all(alias == name for name, (_, alias) in imported.items()), imported
    for name, module in where.items():
        assert getattr(import_module(module), name) is getattr(tierflow, name), name
    assert (REPO / "tierflow" / "py.typed").is_file()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data.get("tierflow", []), package_data  # installed with the package, not just here


def test_phase_ask_names_every_keyword_the_call_takes() -> None:
    """`Phase.ask(self, settings, **request: Any)` hid `system=`, `prompt=`, `output=`, `checks=`, `subject=` from
    IDEs and type checkers: it names each keyword of `Caller.ask` but the two the phase gives."""
    import inspect

    from tierflow.core.calls import Caller

    def keywords(function: object) -> dict[str, tuple[object, object]]:
        parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        return {p.name: (p.default, p.annotation) for p in parameters if p.kind is p.KEYWORD_ONLY}

    caller = {k: v for k, v in keywords(Caller.ask).items() if k not in ("phase", "complexity")}
    phase = keywords(tierflow.Phase.ask)
    assert {"system", "prompt", "output", "checks", "subject"} <= phase.keys()
    assert {k: default for k, (default, _) in phase.items()} == {k: default for k, (default, _) in caller.items()}
    # The same types, but `output`: Caller.ask's TypeVar is its own; any pydantic model class is what it takes.
    assert {k: (t if k != "output" else "type[T] | None") for k, (_, t) in phase.items()} == {
        k: t for k, (_, t) in caller.items()
    }
    assert phase["output"][1] == "type[BaseModel] | None"
    assert not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(tierflow.Phase.ask).parameters.values())


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"output": "Verdict", "checks": "function"}, "checks takes a list of Check(name, problems)"),
        ({"output": "Verdict", "checks": "one Check"}, "checks takes a list of Check(name, problems)"),
        ({"checks": "list"}, "ask(checks=[always]) without output=: checks judge a structured answer"),
        ({"output": "instance"}, "output takes a pydantic model class"),
        ({"output": "dict"}, "output takes a pydantic model class"),
    ],
)
def test_a_phase_ask_misuse_is_refused_before_any_call_saying_what_to_give(
    tmp_path: Path, given: dict[str, str], said: str
) -> None:
    """A function as a check failed with "'function' object has no attribute 'name'" and one Check with "'Check' object
    is not iterable", each after the call was paid; a model instance or `dict` as output= with an AttributeError;
    and checks on a text answer (no output=) were never run, so the answer passed whatever they said."""
    from tierflow import BaseModel, Check, Phase, RunSettings, TierflowError

    class Verdict(BaseModel):
        decision: str

    always = Check("always", lambda answer: ["always fails"])
    values = {
        "Verdict": Verdict, "instance": Verdict(decision="later"), "dict": dict,
        "function": [lambda answer: []], "one Check": always, "list": [always],
    }  # fmt: skip
    vault = tmp_path / "vault"
    vault.mkdir()
    settings = RunSettings(vault=str(vault), profile="offline", run_id="t", flow="mine")
    with pytest.raises(TierflowError) as refused:
        Phase("collate", "low").ask(
            settings, system="s", prompt='<data>{"text": "A note."}</data>', **{k: values[v] for k, v in given.items()}
        )
    assert said in str(refused.value)
    assert Ledger.for_vault(vault).rows() == []  # refused before the call: nothing paid


@pytest.mark.slow  # mypy reads Prefect's and pydantic's types too: half a minute
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_reads_the_public_api_types(tmp_path: Path) -> None:
    """Where mypy is installed, it types `from tierflow import ...` as the real classes, not Any."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from tierflow import Phase, RunSettings\n"
        "def call(phase: Phase, settings: RunSettings) -> None:\n"
        "    reveal_type(Phase('collate', 'low'))\n"
        "    phase.ask(settings, system='s', prompt='p', subject=3)\n",
        encoding="utf-8",
    )
    env = {**os.environ, "MYPYPATH": str(REPO)}
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", str(probe)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert 'Revealed type is "tierflow.core.phases.Phase"' in out, out
    assert 'Argument "subject" to "ask" of "Phase" has incompatible type "int"' in out, out
