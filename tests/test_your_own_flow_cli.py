"""A flow registered as docs/your-own-flow.md says (a `tierflow.flows` entry point) works by name in the CLI."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import frontmatter
import pytest
from test_public_api import doc_code
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.ledger import Ledger

MODULE = "tierflow_doc_triage"


def install(site: Path, module: str, code: str, entry_points: str) -> None:
    """A module and its distribution's metadata in `site`: what `pip install` of a package would leave there."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[tierflow.flows]\n{entry_points}\n", encoding="utf-8")


@pytest.fixture
def registered_triage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The doc's reading-triage flow, registered with the doc's entry point, on sys.path for this test only."""
    install(tmp_path / "site", MODULE, doc_code(), f"reading-triage = {MODULE}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # also clears importlib's caches
    yield "reading-triage"
    sys.modules.pop(MODULE, None)


def triage_vault(root: Path) -> Path:
    inbox = root / "vault" / "Inbox"
    inbox.mkdir(parents=True)
    (inbox / "Long read.md").write_text("---\ntitle: Long read\n---\n\n" + "A careful argument. " * 20)
    (inbox / "Stub.md").write_text("---\ntitle: Stub\n---\n\nTODO\n")
    return root / "vault"


def said(result: object) -> str:
    return " ".join(result.output.replace("│", " ").split())  # type: ignore[attr-defined]


@pytest.mark.usefixtures("prefect_harness")
def test_a_registered_flow_runs_by_name(registered_triage: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", registered_triage, "--vault", str(vault)])
    assert result.exit_code == 0, result.output
    note = frontmatter.load(vault / "Triage" / "Reading triage.md")
    run_id = note["tierflow_run"]
    assert len(Ledger.for_vault(vault).rows(run_id=run_id)) == 3  # two triages and the summary
    # Its flow takes no run_id: the line at the start says it in one sentence (it read "starting the ... flow takes").
    starting = "starting a run of reading-triage (its flow takes no run_id, so `tierflow resume` cannot continue it)"
    assert starting in said(result)


def test_a_registered_flow_is_planned_and_listed_by_name(registered_triage: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    plan = CliRunner().invoke(app, ["plan", registered_triage, "--vault", str(vault)])
    assert plan.exit_code == 2
    assert "the reading-triage flow has no planner" in said(plan), plan.output  # not "Invalid value for 'FLOW'"
    for command in ("run", "plan"):
        help_text = said(CliRunner().invoke(app, [command, "--help"]))
        assert "A registered flow: module-review, reading-notes, reading-triage, student-feedback." in help_text
    unknown = CliRunner().invoke(app, ["run", "reading-trage", "--vault", str(vault)])
    assert unknown.exit_code == 2
    assert "'reading-trage' is not a registered flow; the flows are: module-review, reading-notes, reading-triage" in (
        said(unknown)
    )


def test_a_flow_given_as_its_file_is_told_how_to_register_it(registered_triage: str, tmp_path: Path) -> None:
    """`tierflow run my_triage.py:reading_triage`, as `prefect deploy` takes a flow, said only that it was not a
    registered flow: not that flows are run by name, nor how to register one."""
    vault = triage_vault(tmp_path)
    for command in ("run", "plan"):
        result = CliRunner().invoke(app, [command, "triage/my_triage.py:reading_triage", "--vault", str(vault)])
        assert result.exit_code == 2
        assert "'triage/my_triage.py:reading_triage' is not a registered flow" in said(result)
        assert "A flow is run by the name it is registered under, not by its file" in said(result)
        assert 'NAME = "my_package.my_module:SPEC" (docs/your-own-flow.md)' in said(result)


@pytest.mark.usefixtures("prefect_harness")
def test_a_registered_flow_is_scheduled_by_name(registered_triage: str, tmp_path: Path) -> None:
    from prefect import get_client

    vault = triage_vault(tmp_path)
    help_text = CliRunner().invoke(app, ["schedule", registered_triage, "--help"])
    assert help_text.exit_code == 0, help_text.output
    assert "Usage: root schedule reading-triage [OPTIONS]" in said(help_text)  # not `registered-flow [OPTIONS] FLOW`
    assert "Register the reading-triage flow" in said(help_text) and "registered-flow" not in help_text.output
    # A parameter the flow does not take is a usage error (2), as `tierflow run --param` says it.
    refused = CliRunner().invoke(app, ["schedule", registered_triage, "--vault", str(vault), "--param", "colour=red"])
    assert refused.exit_code == 2
    assert "the reading-triage flow takes no parameter 'colour'; it takes: folder, vault" in said(refused)
    # On a schedule its deployment is not called on-demand.
    result = CliRunner().invoke(app, ["schedule", registered_triage, "--vault", str(vault), "--cron", "0 7 * * MON"])
    assert result.exit_code == 0, result.output
    assert "deployment reading-triage/scheduled on schedule" in said(result)
    anytime = CliRunner().invoke(app, ["schedule", registered_triage, "--vault", str(vault)])
    assert anytime.exit_code == 0, anytime.output
    assert "deployment reading-triage/on-demand with no schedule" in said(anytime)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("reading-triage/scheduled")
        on_demand = client.read_deployment_by_name("reading-triage/on-demand")
    assert deployment.entrypoint == f"{MODULE}.reading_triage"
    assert deployment.parameters == on_demand.parameters == {"vault": str(vault.resolve())}


def resumable(code: str) -> str:
    """The doc's flow, given the parameters docs/your-own-flow.md says make a flow resumable."""
    signature = 'def reading_triage(vault: str, folder: str = "Inbox") -> RunSummary:'
    start = 'begin_run("reading-triage", vault=vault, parameters={"folder": folder}, folders=[folder])'
    assert signature in code and start in code
    return code.replace(
        signature,
        'def reading_triage(vault: str, folder: str = "Inbox", profile: str | None = None, run_id: str | None = None)'
        " -> RunSummary:",
    ).replace(start, start[:-1] + ", profile=profile, run_id=run_id)")


@pytest.mark.usefixtures("prefect_harness")
def test_resume_of_a_flow_that_takes_no_run_id_says_it_cannot_continue_the_run(
    registered_triage: str, tmp_path: Path
) -> None:
    vault = triage_vault(tmp_path)
    assert CliRunner().invoke(app, ["run", registered_triage, "--vault", str(vault)]).exit_code == 0
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    result = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault)])
    assert result.exit_code == 2, result.output
    assert (
        f"run {run_id} is of the reading-triage flow, whose function takes no run_id, so `tierflow resume` cannot "
        "continue that run." in said(result)
    )
    assert len(Ledger.for_vault(vault).rows()) == 3  # nothing ran again


@pytest.mark.usefixtures("prefect_harness")
def test_resume_passes_a_flow_only_the_parameters_it_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"{MODULE}_resumable"
    install(tmp_path / "site", module, resumable(doc_code()), f"reading-triage = {module}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        vault = triage_vault(tmp_path)
        first = CliRunner().invoke(app, ["run", "reading-triage", "--vault", str(vault), "--profile", "offline"])
        assert first.exit_code == 0, first.output
        run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
        # The run's id and how to resume it come first, on stderr, so a run that dies leaves them behind.
        started = f"starting run {run_id}: `tierflow resume {run_id} --vault {vault.resolve()} --profile offline`"
        assert first.stderr.startswith(started + " continues it if it stops\n"), first.stderr
        # The run remembered vault, folder, project, profile, config and tier; the flow takes no config or tier.
        result = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault)])
        assert result.exit_code == 0, result.output
        rows = Ledger.for_vault(vault).rows(run_id=run_id)
        assert len(rows) == 6 and sum(bool(r["cached_result"]) for r in rows) == 3  # the resume paid for nothing
        refused = CliRunner().invoke(app, ["run", "reading-triage", "--vault", str(vault), "--tier", "deep"])
        assert refused.exit_code == 2
        assert "the reading-triage flow takes no 'tier' parameter, so --tier cannot reach it" in said(refused)
    finally:
        sys.modules.pop(module, None)


def test_run_refuses_an_option_the_flow_does_not_take(registered_triage: str, tmp_path: Path) -> None:
    """`--project` reached no flow that takes none (its spend went to no project), and `--since` no
    student-feedback run, without a word."""
    vault = triage_vault(tmp_path)
    for flow, option in ((registered_triage, ["--project", "EDU9"]), ("student-feedback", ["--since", "2026-11-01"])):
        result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault), *option, "--dry-run"])
        assert result.exit_code == 2, result.output
        name = option[0].lstrip("-")
        assert f"the {flow} flow takes no {name!r} parameter, so {option[0]} would be ignored" in said(result)


def with_n(code: str) -> str:
    """The doc's flow with a parameter of its own, `n: int`, that its run remembers, and a planner that counts it."""
    signature = 'def reading_triage(vault: str, folder: str = "Inbox") -> RunSummary:'
    start = 'begin_run("reading-triage", vault=vault, parameters={"folder": folder}, folders=[folder])'
    spec = 'SPEC = FlowSpec("reading-triage", reading_triage)'
    assert signature in code and start in code and spec in code
    planner = (
        "def plan_triage(config, vault, *, tier=None, n: int = 2):\n"
        "    from tierflow import Plan\n\n"
        '    return Plan(flow="reading-triage", since=None, until=None, selected=n, skipped=[], phase_names=[])\n\n\n'
    )
    return (
        code.replace(signature, signature.replace(") ->", ", n: int = 2) ->"))
        .replace(start, start.replace('{"folder": folder}', '{"folder": folder, "n": n}'))
        .replace(spec, planner + 'SPEC = FlowSpec("reading-triage", reading_triage, plan=plan_triage)')
    )


@pytest.fixture
def triage_with_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = f"{MODULE}_with_n"
    install(tmp_path / "site", module, with_n(doc_code()), f"reading-triage = {module}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "reading-triage"
    sys.modules.pop(module, None)


def flow_runs(flow: str) -> int:
    """How many runs of `flow` Prefect's (test) server has."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:  # counted, not listed: a listing stops at one page (200 runs)
        return client.count_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))


@pytest.mark.usefixtures("prefect_harness")
def test_run_passes_a_flow_its_own_parameters_with_param(triage_with_n: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", triage_with_n, "--vault", str(vault), "--param", "n=3"])
    assert result.exit_code == 0, result.output
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    _, parameters = Ledger.for_vault(vault).run_parameters(run_id)
    assert parameters["n"] == 3 and type(parameters["n"]) is int  # parsed as `tierflow schedule --param` parses it
    assert parameters["folder"] == "Inbox"
    help_text = said(CliRunner().invoke(app, ["run", "--help"]))
    assert "--param" in help_text and "NAME=VALUE" in help_text


@pytest.mark.usefixtures("prefect_harness")
def test_run_refuses_a_param_the_flow_cannot_take_before_any_run_starts(triage_with_n: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    before = flow_runs(triage_with_n)

    def refused(*param: str) -> str:
        result = CliRunner().invoke(app, ["run", triage_with_n, "--vault", str(vault), *param])
        assert result.exit_code == 2, result.output
        assert "starting" not in result.output
        return said(result)

    unknown = refused("--param", "fodler=Reading")
    assert "flow takes no parameter 'fodler'; it takes: folder, n, vault. Did you mean 'folder'?" in unknown
    assert "Did you mean" not in refused("--param", "colour=red")
    bad = refused("--param", "n=three")
    assert "bad parameter for the reading-triage flow: n takes int, not 'three' (Input should be a valid integer" in bad
    assert "for example --param n=2" in bad
    duplicate = refused("--param", f"vault={vault}")
    assert "--param vault: --vault gives the flow's 'vault' parameter; use --vault, not --param" in duplicate
    assert "--param run_id" in refused("--param", "run_id=abc")
    assert "write it as NAME=VALUE" in refused("--param", "n")
    assert flow_runs(triage_with_n) == before  # no flow run was started, not even one that failed at once
    assert not (vault / "Triage").exists()


def test_plan_and_dry_run_pass_a_flow_its_own_parameters(triage_with_n: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    for command in (["plan"], ["run", "--dry-run"]):
        result = CliRunner().invoke(app, [*command, triage_with_n, "--vault", str(vault), "--param", "n=3"])
        assert result.exit_code == 0, result.output
        assert "reading-triage: 3 notes selected" in said(result)  # the planner got n=3
        bad = CliRunner().invoke(app, [*command, triage_with_n, "--vault", str(vault), "--param", "n=three"])
        assert bad.exit_code == 2
        assert "bad parameter for the reading-triage flow: n takes int, not 'three'" in said(bad)
    help_text = said(CliRunner().invoke(app, ["plan", "--help"]))
    assert "--param" in help_text


OPTIONS_FLOW = """
import json
from pathlib import Path

from prefect import flow

from tierflow import FlowSpec


@flow(name="options-seen")
def options_seen(vault: str, mode: str = "summary", module: str = "Teaching/EDU7001", wait: bool = False,
                 since: str | None = None) -> None:
    Path(vault, "seen.json").write_text(json.dumps({"mode": mode, "module": module, "wait": wait, "since": since}))


SPEC = FlowSpec(name="options-seen", flow=options_seen)
"""


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_keeps_its_own_defaults_for_options_the_user_did_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tierflow run` passes a flow of another package only the options the user gave: `--mode`'s default
    `direct` or `--wait` never replaces the flow's own `mode` or `wait`."""
    install(tmp_path / "site", "tierflow_options_seen", OPTIONS_FLOW, "options-seen = tierflow_options_seen:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    vault = triage_vault(tmp_path)
    try:
        for args, seen in (
            ([], {"mode": "summary", "module": "Teaching/EDU7001", "wait": False, "since": None}),
            (["--mode", "batch", "--no-wait", "--module", "M"], {"mode": "batch", "module": "M", "wait": False}),
        ):
            result = CliRunner().invoke(app, ["run", "options-seen", "--vault", str(vault), *args])
            assert result.exit_code == 0, result.output
            got = json.loads((vault / "seen.json").read_text())
            assert {k: got[k] for k in seen} == seen, args
            # It returns nothing: it ran all the same, and the CLI says where its calls are.
            assert "the options-seen flow returned NoneType, not a RunSummary" in said(result)
    finally:
        sys.modules.pop("tierflow_options_seen", None)


@pytest.mark.usefixtures("prefect_harness")
def test_param_digits_reach_a_str_parameter_as_typed(registered_triage: str, tmp_path: Path) -> None:
    """`--param folder=2024` was read as JSON, the int 2024, which the doc flow's `folder: str` refused."""
    from prefect import get_client

    vault = triage_vault(tmp_path)
    (vault / "Inbox").rename(vault / "2024")
    result = CliRunner().invoke(app, ["run", registered_triage, "--vault", str(vault), "--param", "folder=2024"])
    assert result.exit_code == 0, result.output
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    _, parameters = Ledger.for_vault(vault).run_parameters(run_id)
    assert parameters["folder"] == "2024"
    assert len(Ledger.for_vault(vault).rows(run_id=run_id)) == 3  # the two notes of 2024/ and the summary
    schedule = ["schedule", registered_triage, "--vault", str(vault), "--param", "folder=2024"]
    scheduled = CliRunner().invoke(app, schedule)
    assert scheduled.exit_code == 0, scheduled.output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("reading-triage/on-demand")
    assert deployment.parameters == {"vault": str(vault.resolve()), "folder": "2024"}


TYPED_FLOW = """
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from prefect import flow

from tierflow import FlowSpec


@flow(name="params-seen")
def params_seen(vault: str, folder: str = "Inbox", label: str | None = None, where: Path | None = None, n: int = 1,
                ratio: float = 0.5, flag: bool = True, day: date | None = None, tags: list[str] | None = None,
                sizes: dict[str, int] | None = None, extra=None) -> None:
    seen = {"folder": folder, "label": label, "where": where, "n": n, "ratio": ratio, "flag": flag, "day": day,
            "tags": tags, "sizes": sizes, "extra": extra}
    types = {k: "Path" if isinstance(v, Path) else type(v).__name__ for k, v in seen.items()}
    Path(vault, "seen.json").write_text(json.dumps({"types": types, "values": seen}, default=str))


SPEC = FlowSpec(name="params-seen", flow=params_seen)
"""


@pytest.fixture
def params_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A flow of another package whose parameters have the types a `--param` may be read as."""
    install(tmp_path / "site", "tierflow_params_seen", TYPED_FLOW, "params-seen = tierflow_params_seen:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "params-seen"
    sys.modules.pop("tierflow_params_seen", None)


@pytest.mark.usefixtures("prefect_harness")
def test_param_is_read_as_the_flows_signature_types_it(params_seen: str, tmp_path: Path) -> None:
    vault = triage_vault(tmp_path)
    given = {
        "folder": "2024", "label": "007", "where": "2024", "n": "3", "ratio": "1", "flag": "false",
        "day": "2026-11-16", "tags": '["a", "b"]', "sizes": '{"a": 1}', "extra": "3",
    }  # fmt: skip
    params = [arg for name, value in given.items() for arg in ("--param", f"{name}={value}")]
    result = CliRunner().invoke(app, ["run", params_seen, "--vault", str(vault), *params])
    assert result.exit_code == 0, result.output
    seen = json.loads((vault / "seen.json").read_text())
    assert seen["types"] == {
        "folder": "str", "label": "str", "where": "Path", "n": "int", "ratio": "float", "flag": "bool",
        "day": "date", "tags": "list", "sizes": "dict", "extra": "int",  # no type: JSON when it is JSON
    }  # fmt: skip
    assert seen["values"] == {
        "folder": "2024", "label": "007", "where": "2024", "n": 3, "ratio": 1.0, "flag": False, "day": "2026-11-16",
        "tags": ["a", "b"], "sizes": {"a": 1}, "extra": 3,
    }  # fmt: skip
    before = flow_runs(params_seen)

    def refused(param: str) -> str:
        result = CliRunner().invoke(app, ["run", params_seen, "--vault", str(vault), "--param", param])
        assert result.exit_code == 2, result.output
        return said(result)

    # Each refusal names the parameter, its type, and a value that type takes: its default, else one its schema fits.
    n = refused("n=three")
    assert "bad parameter for the params-seen flow: n takes int, not 'three' (Input should be a valid integer" in n
    assert "for example --param n=1" in n
    tags = refused("tags=a")
    assert "tags takes list[str] | None, not 'a' (Input should be a valid list)" in tags
    assert """for example --param 'tags=["example"]'""" in tags
    day = refused("day=soon")
    assert "day takes datetime.date | None, not 'soon'" in day and "for example --param day=2024-01-01" in day
    sizes = refused('sizes={"a": "lots"}')  # JSON, so the reason is what is wrong inside it
    assert 'sizes takes dict[str, int] | None, not \'{"a": "lots"}\' (a: Input should be a valid integer' in sizes
    assert "Did you mean 'flag'?" in refused("flags=true")
    assert flow_runs(params_seen) == before  # none of them started a run


def test_a_param_given_twice_is_refused_not_replaced_by_the_later_one(params_seen: str, tmp_path: Path) -> None:
    """`--param tags=a --param tags=b` ran the flow with tags "b" alone, saying nothing of "a". Refused, the hint
    fits the parameter's type: it suggested a list for a date or a text too, which the flow would refuse."""
    vault = triage_vault(tmp_path)

    def refused(command: str, name: str, first: str, second: str) -> str:
        given = ["--param", f"{name}={first}", "--param", f"{name}={second}"]
        result = CliRunner().invoke(app, [command, params_seen, "--vault", str(vault), *given])
        assert result.exit_code == 2, result.output
        return said(result)

    for command in ("run", "schedule"):
        assert (
            "--param label is given twice ('a' and 'b'): give it once: label takes one value (str | None), so keep "
            "the one you mean: --param label=a or --param label=b"
        ) in refused(command, "label", "a", "b")
        assert (
            "day takes one value (date | None), so keep the one you mean: --param day=2026-11-16 or --param "
            "day=2026-11-17"
        ) in refused(command, "day", "2026-11-16", "2026-11-17")
        assert "n takes one value (int), so keep the one you mean: --param n=1 or --param n=2" in refused(
            command, "n", "1", "2"
        )
        assert (
            "--param tags is given twice ('a' and 'b'): give it once: tags takes a list (list[str] | None), given as "
            'one JSON value: --param \'tags=["a", "b"]\''
        ) in refused(command, "tags", "a", "b")
        assert 'tags takes a list (list[str] | None), given as one JSON value: --param \'tags=["3", "4"]\'' in (
            refused(command, "tags", "3", "4")  # items of a list of texts, written as texts
        )
        assert 'give it once; a list is one JSON value, for example --param \'extra=["a", "b"]\'' in refused(
            command,
            "extra",
            "a",
            "b",  # no type: a list or either one
        )
    assert not (vault / "seen.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_schedule_refuses_a_param_an_option_gives_as_run_does(registered_triage: str, tmp_path: Path) -> None:
    """`tierflow schedule FLOW --param vault=X` registered a deployment over vault X, not the one --vault gave."""
    from prefect import get_client

    vault = triage_vault(tmp_path)
    other = tmp_path / "other"
    other.mkdir()

    def deployments() -> list[tuple[str, object]]:
        from tierflow.cli.prefect_ops import every

        with get_client(sync_client=True) as client:  # every page: the session's server may hold more than one
            return sorted((str(d.id), d.updated) for d in every(client.read_deployments))

    before = deployments()

    def refused(*args: str) -> str:
        result = CliRunner().invoke(app, ["schedule", *args])
        assert result.exit_code == 2, result.output
        return said(result)

    use_vault = "--param vault: --vault gives the flow's 'vault' parameter; use --vault, not --param"
    assert use_vault in refused(registered_triage, "--vault", str(vault), "--param", f"vault={other}")
    assert use_vault in refused("reading-notes", "--vault", str(vault), "--param", f"vault={other}")
    use_mode = "--param mode: --mode gives the flow's 'mode' parameter; use --mode, not --param"
    assert use_mode in refused("student-feedback", "--vault", str(vault), "--param", "mode=batch")
    assert "--param module: --module gives" in refused("module-review", "--vault", str(vault), "--param", "module=M")
    assert "--param run_id: a run's id is tierflow's to choose" in refused(
        registered_triage, "--vault", str(vault), "--param", "run_id=abc"
    )
    assert deployments() == before  # nothing was registered or updated


@pytest.fixture
def triage_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Registers a variant of the doc's flow's code as the `reading-triage` flow, for this test only."""
    module = f"{MODULE}_variant"

    def register(code: str) -> str:
        install(tmp_path / "site", module, code, f"reading-triage = {module}:SPEC")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        return "reading-triage"

    yield register
    sys.modules.pop(module, None)


def replaced(code: str, old: str, new: str) -> str:
    assert old in code, old
    return code.replace(old, new)


def flow_run_state(vault: Path) -> object:
    """The final state Prefect's server recorded for the flow run of the vault's (one) run: what the UI shows."""
    from prefect import get_client

    (flow_run_id,) = {r["flow_run_id"] for r in Ledger.for_vault(vault).rows()}
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


@pytest.mark.usefixtures("prefect_harness")
def test_an_async_flow_runs_by_name(triage_as: Callable[[str], str], tmp_path: Path) -> None:
    """The doc's flow as `async def`: `tierflow run` made its coroutine and never ran it, then said the flow had
    "returned coroutine, not a RunSummary", with a RuntimeWarning that it was never awaited."""
    signature = 'def reading_triage(vault: str, folder: str = "Inbox") -> RunSummary:'
    flow = triage_as(replaced(doc_code(), signature, "async " + signature))
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault)])
    assert result.exit_code == 0, result.output
    assert "coroutine" not in result.output
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    assert len(Ledger.for_vault(vault).rows(run_id=run_id)) == 3  # two triages and the summary


@pytest.mark.usefixtures("prefect_harness")
def test_a_copied_flow_whose_begin_run_names_the_flow_it_was_copied_from_is_told_to_give_its_own_name(
    registered_triage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doc's flow copied and renamed in its @flow and FlowSpec only: it said "the flow file ... differs from the one
    in the installed tierflow" and to pip install a checkout, as if it were another copy of the reading-triage flow."""
    code = replaced(doc_code(), '@flow(name="reading-triage")', '@flow(name="weekly-triage")')
    code = replaced(code, 'FlowSpec("reading-triage"', 'FlowSpec("weekly-triage"')
    install(tmp_path / "site", "tierflow_weekly_triage", code, "weekly-triage = tierflow_weekly_triage:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    vault = triage_vault(tmp_path)
    try:
        result = CliRunner().invoke(app, ["run", "weekly-triage", "--vault", str(vault)])
    finally:
        sys.modules.pop("tierflow_weekly_triage", None)
    assert result.exit_code == 2, result.output
    assert "begin_run('reading-triage') in the weekly-triage flow (" in said(result)
    assert "tierflow_weekly_triage.py) gives the name of another registered flow, the reading-triage flow of" in (
        said(result)
    )
    assert "give begin_run this flow's own name" in said(result) and "pip install" not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_whose_phase_failed_exits_3_with_its_report_and_ends_failed_in_prefect(
    triage_as: Callable[[str], str], tmp_path: Path
) -> None:
    """A scheduled run of it would have shown Completed in the Prefect UI, as if the week had been triaged."""
    from prefect.client.schemas.objects import StateType

    answer = '    return {"link": note.link, "decision": verdict.decision, "reason": verdict.reason}'
    flow = triage_as(replaced(doc_code(), answer, '    raise KeyError("decision")'))  # a bug after a paid answer
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault)])

    assert result.exit_code == 3, result.output
    why = "collate failed: no item finished; all 2 failed (the first: KeyError: 'decision')"
    assert f"failed: {why}" in said(result)
    (report,) = (vault / "tierflow" / "Runs").glob("* reading-triage *.md")
    assert why in " ".join(report.read_text(encoding="utf-8").split())
    assert len(Ledger.for_vault(vault).rows(run_id=frontmatter.load(report)["tierflow_run"])) == 2
    state = flow_run_state(vault)
    assert state.type == StateType.FAILED and state.message.startswith(why), state


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("takes_run_id", [False, True], ids=["own-run-id", "resumable"])
def test_a_tierflow_error_in_a_flows_own_code_after_its_calls_exits_3_and_says_where_they_are(
    triage_as: Callable[[str], str], tmp_path: Path, takes_run_id: bool
) -> None:
    """A VaultError raised by the flow's body, not by a phase task (here: writing outside the vault, after every
    call was paid), ended the run with the usage-error code 2, and not a word of the run or its calls."""
    code = resumable(doc_code()) if takes_run_id else doc_code()
    flow = triage_as(replaced(code, 'writer_for(settings, "Triage")', 'writer_for(settings, "../Triage")'))
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault)], env={"COLUMNS": "300"})

    assert result.exit_code == 3, result.output
    (run_id,) = {r["run_id"] for r in Ledger.for_vault(vault).rows()}
    assert len(Ledger.for_vault(vault).rows(run_id=run_id)) == 3  # two triages and the summary
    assert "error: output folder '../Triage' is outside the vault; choose a folder inside it" in said(result)
    assert f"run {run_id} stopped: its 3 calls ($0.0000) are in the ledger" in said(result)
    assert f"`tierflow spend --run {run_id} --vault {vault}` lists them" in said(result)
    if takes_run_id:
        assert f"`tierflow resume {run_id} --vault {vault}` continues it without paying again" in said(result)
    else:  # it cannot be resumed, but a new run reuses the answers paid for
        assert f"`tierflow run reading-triage --vault {vault}` runs it again" in said(result)
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_tierflow_error_before_a_flow_made_any_call_stays_a_usage_error(
    triage_as: Callable[[str], str], tmp_path: Path
) -> None:
    flow = triage_as(resumable(doc_code()))
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault), "--param", "folder=Nowhere"])

    assert result.exit_code == 2, result.output
    missing = f"'Nowhere' is not a folder of the vault {vault.resolve()} (looked for {vault.resolve() / 'Nowhere'})"
    assert f"error: {missing}. The vault holds: Inbox. Create it or give another." in said(result)
    assert Ledger.for_vault(vault).rows() == [] and "in the ledger" not in said(result)


NAMED_AS_OPTIONS_FLOW = """
import json
from pathlib import Path

from prefect import flow

from tierflow import FlowSpec, Plan

NAMES = ("mode", "wait", "since", "until", "assignment", "module", "redraft_all")


@flow(name="named-as-options")
def named_as_options(vault: str, mode: str = "normal", wait: int = 0, since: str | None = None,
                     until: str | None = None, assignment: str = "", module: list[str] | None = None,
                     redraft_all: str = "no") -> None:
    seen = {"mode": mode, "wait": wait, "since": since, "until": until, "assignment": assignment, "module": module,
            "redraft_all": redraft_all}
    Path(vault, "seen.json").write_text(json.dumps(seen))


def plan_it(config, vault, *, tier=None, mode: str = "normal", wait: int = 0):
    Path(vault, "planned.json").write_text(json.dumps({"mode": mode, "wait": wait}))
    return Plan(flow="named-as-options", since=None, until=None, selected=0, skipped=[], phase_names=[])


SPEC = FlowSpec(name="named-as-options", flow=named_as_options, plan=plan_it)
"""


@pytest.fixture
def named_as_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A flow of another package whose own parameters share their names with options made for tierflow's flows."""
    module = "tierflow_named_as_options"
    install(tmp_path / "site", module, NAMED_AS_OPTIONS_FLOW, f"named-as-options = {module}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "named-as-options"
    sys.modules.pop(module, None)


@pytest.mark.usefixtures("prefect_harness")
def test_a_flows_own_parameter_named_as_a_builtin_flows_option_is_given_with_param(
    named_as_options: str, tmp_path: Path
) -> None:
    """`--param mode=raise_after` was refused ("use --mode, not --param"), and `--mode raise_after` too ("use direct
    or batch"): a flow of another package could not be given its own `mode`, nor `wait`, `since`, `until`,
    `assignment`, `module` or `redraft_all`, which only tierflow's own flows take from those options."""
    vault = triage_vault(tmp_path)

    def seen(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(app, ["run", named_as_options, "--vault", str(vault), *args])
        assert result.exit_code == 0, result.output
        return json.loads((vault / "seen.json").read_text())

    given = {
        "mode": "raise_after", "wait": "5", "since": "last week", "until": "2026", "assignment": "A1",
        "module": '["M1", "M2"]', "redraft_all": "yes",
    }  # fmt: skip
    params = [arg for name, value in given.items() for arg in ("--param", f"{name}={value}")]
    assert seen(*params) == {
        "mode": "raise_after", "wait": 5, "since": "last week", "until": "2026", "assignment": "A1",
        "module": ["M1", "M2"], "redraft_all": "yes",
    }  # fmt: skip
    # The option gives the flow's parameter too, without the check made for student-feedback's --mode.
    assert seen("--mode", "raise_after")["mode"] == "raise_after"
    assert seen("--mode", "direct")["mode"] == "direct"  # a value, not "left at tierflow's default"
    assert seen()["mode"] == "normal"  # unset: the flow's own default
    # Given twice, one of them would be dropped without a word.
    both = ["--mode", "a", "--param", "mode=b"]
    twice = CliRunner().invoke(app, ["run", named_as_options, "--vault", str(vault), *both])
    assert twice.exit_code == 2, twice.output
    assert "--param mode: --mode gives the flow's 'mode' parameter; use --mode, not --param" in said(twice)
    # tierflow's own flows keep their options' checks and messages.
    for flow, args, message in (
        ("student-feedback", ["--param", "mode=batch"], "--mode gives the flow's 'mode' parameter; use --mode"),
        ("reading-notes", ["--param", "since=2026-11-16"], "--since gives the flow's 'since' parameter; use --since"),
        ("student-feedback", ["--mode", "raise_after"], "--mode 'raise_after': use direct or batch"),
    ):
        refused = CliRunner().invoke(app, ["run", flow, "--vault", str(vault), *args, "--dry-run"])
        assert refused.exit_code == 2, refused.output
        assert message in said(refused), said(refused)


def test_plan_gives_a_flows_planner_its_own_parameters_named_as_options(named_as_options: str, tmp_path: Path) -> None:
    """`tierflow plan` refused `--param mode=...` for a flow of another package, and gave its planner `mode`
    "direct" (tierflow's default for student-feedback) when no --mode was given."""
    vault = triage_vault(tmp_path)

    def planned(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(app, ["plan", named_as_options, "--vault", str(vault), *args])
        assert result.exit_code == 0, result.output
        return json.loads((vault / "planned.json").read_text())

    assert planned() == {"mode": "normal", "wait": 0}
    assert planned("--param", "mode=raise_after", "--param", "wait=3") == {"mode": "raise_after", "wait": 3}
    assert planned("--mode", "raise_after") == {"mode": "raise_after", "wait": 0}
    both = ["--mode", "a", "--param", "mode=b"]
    twice = CliRunner().invoke(app, ["plan", named_as_options, "--vault", str(vault), *both])
    assert twice.exit_code == 2, twice.output
    assert "--param mode: --mode gives the flow's 'mode' parameter; use --mode, not --param" in said(twice)


def test_the_rerun_of_a_flow_gives_its_own_parameters_named_as_options_with_param(
    named_as_options: str, tmp_path: Path
) -> None:
    """The command `tierflow resume` offers for a flow that takes no run_id gave its `mode` as `--mode` and
    dropped its `wait=5` (read as `--wait/--no-wait`)."""
    from tierflow.cli.app import _rerun_of
    from tierflow.core.registry import flow_spec

    vault = triage_vault(tmp_path)
    remembered = {"mode": "raise_after", "wait": 5}
    again = _rerun_of(flow_spec(named_as_options), named_as_options, vault, remembered, config=None, profile=None)
    assert again == f"tierflow run named-as-options --vault {vault} --param mode=raise_after --param wait=5"


def reports_of(vault: Path, run_id: str) -> list[Path]:
    """The run report notes in the runs folder that say they are of `run_id`."""
    runs = vault / "tierflow" / "Runs"
    return sorted(p for p in runs.glob("*.md") if frontmatter.load(p).get("tierflow_run") == run_id)


def run_at_1149(flow: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Path]:
    """A run of `flow` at 11:49 on 2026-11-18, by tierflow's clock: its vault, its id and its one report note."""
    vault = triage_vault(tmp_path)
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T11:49:00+00:00")
    first = CliRunner().invoke(app, ["run", flow, "--vault", str(vault), "--profile", "offline"])
    assert first.exit_code == 0, first.output
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    (report,) = reports_of(vault, run_id)
    return vault, run_id, report


@pytest.mark.usefixtures("prefect_harness")
def test_a_resumed_run_updates_its_own_report_and_its_day_lists_it_once(
    triage_as: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run at 11:49, resumed at 11:50, at 12:05 and the next morning: one report note, the day it started lists the
    run once, and the notes' spend sums to the run's (each resume wrote another note, each with the whole run's
    spend, and the day's index listed the run once per note)."""
    vault, run_id, report = run_at_1149(triage_as(resumable(doc_code())), tmp_path, monkeypatch)
    started = frontmatter.load(report)["tierflow_started"]
    index = vault / "tierflow" / "Runs" / "2026-11-18 tierflow runs.md"
    for clock in ("2026-11-18T11:50:00+00:00", "2026-11-18T12:05:00+00:00", "2026-11-19T09:30:00+00:00"):
        monkeypatch.setenv("TIERFLOW_CLOCK_START", clock)
        resumed = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault)])
        assert resumed.exit_code == 0, resumed.output
        assert reports_of(vault, run_id) == [report], clock
        post = frontmatter.load(report)
        assert (post["tierflow_day"], post["tierflow_started"]) == ("2026-11-18", started)  # the day it started
        assert index.read_text(encoding="utf-8").count(f"[[{report.stem}]]") == 1, clock
    rows = Ledger.for_vault(vault).rows(run_id=run_id)
    assert frontmatter.load(report)["tierflow_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    assert not (vault / "tierflow" / "Runs" / "2026-11-19 tierflow runs.md").exists()  # it is not that day's run


@pytest.mark.usefixtures("prefect_harness")
def test_a_resumed_run_keeps_the_report_a_person_edited_and_its_day_lists_the_run_once(
    triage_as: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report a person edited is kept byte for byte, as any note tierflow wrote: the resume's report goes to one
    sibling dated the run's day, updated by later resumes, and the day's index lists the run once, by that sibling."""
    vault, run_id, report = run_at_1149(triage_as(resumable(doc_code())), tmp_path, monkeypatch)
    edited = report.read_text(encoding="utf-8") + "\nMy remark on this run.\n"
    report.write_text(edited, encoding="utf-8")
    sibling = report.with_name(f"{report.stem} (tierflow 2026-11-18).md")
    index = vault / "tierflow" / "Runs" / "2026-11-18 tierflow runs.md"
    for clock in ("2026-11-18T12:05:00+00:00", "2026-11-19T09:30:00+00:00"):
        monkeypatch.setenv("TIERFLOW_CLOCK_START", clock)
        resumed = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault)])
        assert resumed.exit_code == 0, resumed.output
        assert report.read_text(encoding="utf-8") == edited
        assert set(reports_of(vault, run_id)) == {report, sibling}, clock
        listed = index.read_text(encoding="utf-8")
        assert listed.count(f"[[{sibling.stem}]]") == 1 and f"[[{report.stem}]]" not in listed, clock


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("before", "statement", "error", "code"),
    [
        # After the triages and the summary: the run made calls, so it failed (3) and says where they are.
        (
            "        return final_state(",
            'raise ShelfMissing("no shelf for this week")',
            "ShelfMissing: no shelf for this week",
            3,
        ),
        # Before any call: nothing was spent, the message alone (2), as for a TierflowError there.
        ("        notes = read_folder(", 'folder = {}["shelf"]', "KeyError: 'shelf'", 2),
    ],
    ids=["after-calls", "before-any-call"],
)
def test_an_error_in_the_flows_own_code_ends_the_run_with_its_type_message_and_line(
    triage_as: Callable[[str], str], tmp_path: Path, before: str, statement: str, error: str, code: int
) -> None:
    """A KeyError, or an exception class of the flow's own, raised in its body (not in a phase task), ended
    `tierflow run` with a traceback and exit code 1, and not a word of the run or its calls."""
    text = replaced(doc_code(), before, f"        {statement}\n{before}")
    text += "\n\nclass ShelfMissing(Exception):\n    pass\n"
    line = text.splitlines().index(f"        {statement}") + 1
    flow = triage_as(text)
    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["run", flow, "--vault", str(vault)], env={"COLUMNS": "300"})

    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code == code, result.output
    where = f"{tmp_path / 'site' / MODULE}_variant.py:{line}, in reading_triage"
    assert f"error: {error} ({where}; --verbose shows its traceback)" in said(result)
    rows = Ledger.for_vault(vault).rows()
    if code == 3:
        (run_id,) = {r["run_id"] for r in rows}  # the flow chose its own run id: the error names it
        assert len(rows) == 3  # two triages and the summary
        assert f"run {run_id} stopped: its 3 calls ($0.0000) are in the ledger" in said(result)
        assert f"`tierflow spend --run {run_id} --vault {vault}` lists them" in said(result)
        assert f"`tierflow run reading-triage --vault {vault}` runs it again" in said(result)
    else:
        assert rows == [] and "in the ledger" not in said(result)


def test_an_error_in_the_flows_own_code_shows_its_traceback_only_with_verbose(tmp_path: Path) -> None:
    """What a terminal shows, in a process of its own: Prefect's console log printed the whole traceback of the
    flow's error (and the CLI a second one); now one line names it, and --verbose adds the traceback."""
    import os
    import subprocess

    statement = 'raise ShelfMissing("no shelf for this week")'
    before = "        return final_state("
    code = (
        replaced(doc_code(), before, f"        {statement}\n{before}")
        + "\n\nclass ShelfMissing(Exception):\n    pass\n"
    )
    install(tmp_path / "site", f"{MODULE}_cli", code, f"reading-triage = {MODULE}_cli:SPEC")
    vault = triage_vault(tmp_path)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "300"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    env.pop("PREFECT_API_URL", None)
    for verbose in ([], ["--verbose"]):
        done = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "run", "reading-triage", "--vault", str(vault), *verbose],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert done.returncode == 3, done.stderr
        assert "error: ShelfMissing: no shelf for this week (" in done.stderr
        assert "stopped: its 3 calls" in done.stderr
        traceback = f"line {code.splitlines().index(f'        {statement}') + 1}, in reading_triage\n    {statement}"
        assert (traceback in done.stderr) == bool(verbose), done.stderr
        assert ("Traceback" in done.stderr + done.stdout) == bool(verbose), done.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_a_vault_and_config_given_with_a_tilde_are_found_in_the_home_folder(
    registered_triage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reading_triage(vault="~/Obsidian/Research")`, as the doc runs it, and `--vault=~/...` (a `~` the shell does
    not expand) ended with "vault ~/vault does not exist"; `--config=~/...` with "config file ... does not exist"."""
    import importlib

    monkeypatch.setenv("HOME", str(tmp_path))
    vault = triage_vault(tmp_path)  # ~/vault
    summary = importlib.import_module(MODULE).reading_triage(vault="~/vault")
    assert Path(summary.report.path).parent == Path("tierflow/Runs")
    assert frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"] == summary.run_id
    result = CliRunner().invoke(app, ["run", registered_triage, "--vault=~/vault"])
    assert result.exit_code == 0, result.output
    assert len(Ledger.for_vault(vault).rows()) == 6  # both runs, in ~/vault's ledger
    (tmp_path / "tierflow.toml").write_text('profile = "local"\n', encoding="utf-8")
    shown = CliRunner().invoke(app, ["config", "show", "--vault=~/vault", "--config=~/tierflow.toml"])
    assert shown.exit_code == 0, shown.output
    assert f"tierflow config ({tmp_path / 'tierflow.toml'})" in said(shown)
    assert '"local"' in said(shown)


def _raising(package: str, source: str) -> tuple[BaseException, object]:
    """The error that `flow()`, defined in a module named `package`.flow, raises, and that function."""
    space: dict[str, object] = {"__name__": f"{package}.flow"}
    exec(compile(source, f"/{package}/flow.py", "exec"), space)  # noqa: S102 - the test's own code
    flow = space["flow"]
    try:
        flow()  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - the error under test
        return exc, flow
    raise AssertionError("the flow did not raise")


def test_only_the_flows_own_code_is_named_in_one_line_tierflows_and_prefects_errors_keep_their_tracebacks() -> None:
    """A bug of tierflow's (in one of its own flows, or in its code an own flow called) is never blamed on the flow's
    code nor hidden behind one line: `raised_in_flow` names only an error the flow's own package raised."""
    from tierflow.cli.runner import raised_in_flow

    own, flow = _raising("my_flows", "def flow():\n    return {}['shelf']\n")
    assert raised_in_flow(own, flow) == "/my_flows/flow.py:2, in flow"
    library, flow = _raising("my_flows", "import json\ndef flow():\n    return json.loads('{')\n")
    assert raised_in_flow(library, flow) == "/my_flows/flow.py:3, in flow"  # its line that called the library
    builtin, flow = _raising("tierflow", "def flow():\n    return {}['shelf']\n")
    assert raised_in_flow(builtin, flow) is None  # one of tierflow's flows: tierflow's bug
    called, flow = _raising(
        "my_flows", "from tierflow.core.config import load_config\ndef flow():\n    return load_config(object())\n"
    )
    assert raised_in_flow(called, flow) is None  # raised inside tierflow's code: tierflow's, with its traceback


def test_the_console_keeps_a_flows_own_logged_exception_and_drops_only_prefects_record_of_the_ending_error() -> None:
    from tierflow.cli.runner import FLOW_RUN_ENDED_BY, ExpectedErrorFilter

    def record(message: str, *args: object) -> logging.LogRecord:
        exc = KeyError("shelf")
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, args, (KeyError, exc, None))

    keep = ExpectedErrorFilter().filter
    assert not keep(record(FLOW_RUN_ENDED_BY, KeyError("shelf")))
    assert keep(record("skipping note %s", "Week 3"))  # the flow's own logger.exception(...)


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_served_by_prefect_runs_from_the_code_prefect_pickled(registered_triage: str, tmp_path: Path) -> None:
    """`reading_triage.serve(...)`: Prefect pickles the flow's own modules by value and runs the flow from that
    bundle, its code named `<dynamic-code>`. begin_run took that for a flow file differing from the installed one
    and refused every served run ("the flow file .../<dynamic-code> differs from the one in the installed
    tierflow"), for tierflow's own flows too when tierflow is installed with `pip install -e`."""
    import importlib

    import cloudpickle

    module = importlib.import_module(MODULE)
    cloudpickle.register_pickle_by_value(module)  # as Prefect's bundles do with the flow's local modules
    try:
        served = cloudpickle.loads(cloudpickle.dumps(module.reading_triage))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert served.fn.__code__.co_filename == "<dynamic-code>"
    vault = triage_vault(tmp_path)
    summary = served(vault=str(vault))
    assert len(Ledger.for_vault(vault).rows(run_id=summary.run_id)) == 3  # two triages and the summary
    assert (vault / "Triage" / "Reading triage.md").is_file()


@pytest.mark.usefixtures("prefect_harness")
def test_a_changed_copy_of_a_flow_of_yours_is_refused_naming_your_package_and_its_entrypoint(
    registered_triage: str, tmp_path: Path
) -> None:
    """A `prefect.yaml` deployment loads the flow from the checkout's file: a copy that differs from the installed
    one is refused. For a flow of another package it named "the installed tierflow 0.1.0" and told to run
    "entrypoint tierflow.flows...", neither of which has the flow."""
    from prefect.flows import load_flow_from_entrypoint

    from tierflow.core.errors import TierflowError

    checkout = tmp_path / "checkout"
    (checkout / "my_triage").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    copy = checkout / "my_triage" / "triage.py"
    copy.write_text(replaced(doc_code(), 'folder: str = "Inbox"', 'folder: str = "Reading"'), encoding="utf-8")
    flow = load_flow_from_entrypoint(f"{copy}:reading_triage", use_placeholder_flow=False)
    with pytest.raises(TierflowError) as refused:
        flow(vault=str(triage_vault(tmp_path)))
    said = " ".join(str(refused.value).split())
    assert f"the flow file {copy} differs from the one in the installed {MODULE} 0.1 (" in said
    assert f"pip install -e {checkout}), or run the installed flow (entrypoint {MODULE}.reading_triage)." in said


DOCUMENTED_FLOW = '''
from datetime import date
from pathlib import Path

from prefect import flow

from tierflow import FlowSpec


@flow(name="documented")
def documented(vault: str, day: date, n: int = 2, where: Path = Path("Inbox"), tags: list[str] | None = None,
               since: str | None = None, run_id: str | None = None) -> None:
    """Triage one day's notes.

    Args:
        vault: The vault.
        day: The day whose notes are read.
        n: How many notes at most.
        where: The folder to read, in the vault.
        tags: Only notes with one of these tags.
    """


def plan_documented(config, vault, *, tier=None, n: int = 2):
    raise AssertionError("not planned here")


SPEC = FlowSpec(name="documented", flow=documented, plan=plan_documented)
'''


@pytest.fixture
def documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A flow of another package with typed parameters that its docstring describes."""
    install(tmp_path / "site", "tierflow_documented", DOCUMENTED_FLOW, "documented = tierflow_documented:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "documented"
    sys.modules.pop("tierflow_documented", None)


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return said(result)


def test_help_for_a_flow_lists_its_own_parameters_with_type_default_docstring_and_how_to_give_them(
    documented: str,
) -> None:
    """`tierflow run FLOW --help` listed tierflow's options only: a flow's own parameters were seen only in the error
    for a wrong `--param` name, without their types, defaults or what they are for."""
    run = help_of("run", documented, "--vault", "anywhere")
    assert "Parameters of the documented flow: Triage one day's notes." in run
    assert "Its own, each given as --param NAME=VALUE (repeatable):" in run
    assert "--param day=<date> The day whose notes are read. A date, YYYY-MM-DD. [required]" in run
    assert "--param n=<int> How many notes at most. [default: 2]" in run
    assert "--param where=<Path> The folder to read, in the vault. [default: Inbox]" in run
    assert (
        "--param tags=<list[str] | None> Only notes with one of these tags. "
        """As JSON, for example --param 'tags=["example"]'.""" in run
    )
    # Its own `since` is given with --param, or --since (`own_parameter`); vault by --vault; run_id by tierflow.
    assert "--param since=<str | None> Or --since." in run
    assert "Given by the options above: --vault." in run
    assert "--param run_id" not in run
    assert "Its run id is tierflow's to choose: `tierflow resume RUN` continues a run that stopped." in run
    # Scheduled, `since` has no option: --param alone. Planned, only what its planner takes.
    schedule = help_of("schedule", documented)
    assert "--param day=<date> The day whose notes are read. A date, YYYY-MM-DD. [required]" in schedule
    assert "--param since=<str | None> [" not in schedule and "--param since=<str | None> Its run id" not in schedule
    assert "Or --since" not in schedule
    plan = help_of("plan", documented)
    assert "--param n=<int> How many notes at most. [default: 2]" in plan
    assert "--param day=" not in plan and "--param tags=" not in plan and "--param since=" not in plan
    # Without a flow, the help says where the flow's parameters are listed.
    assert "With FLOW, --help ends with the flow's parameters." in help_of("run")


def test_help_for_tierflows_own_flows_names_the_options_that_give_their_parameters(registered_triage: str) -> None:
    reading = help_of("run", "reading-notes")
    assert "Parameters of the reading-notes flow: Collate the week's reading" in reading
    assert "It takes no parameter of its own: no --param." in reading
    assert (
        "Given by the options above: --vault, --since, --until, --profile, --config, --tier, --project, "
        "--retry-failed." in reading
    )
    feedback = help_of("schedule", "student-feedback")
    assert "--param redraft_all=<bool> True or false. [default: false]" in feedback
    assert "Given by the options above: --vault, --assignment, --mode, --profile, --config." in feedback
    # The doc's flow: a parameter with no docstring still shows its type and default.
    triage = help_of("run", registered_triage)
    assert "--param folder=<str> [default: Inbox]" in triage
    assert "It takes no run_id, so `tierflow resume` cannot continue its runs." in triage
    assert "The reading-triage flow has no planner (its FlowSpec gives no plan=)" in help_of("plan", registered_triage)


def test_help_for_a_flow_that_does_not_import_is_still_shown_saying_why(triage_as: Callable[[str], str]) -> None:
    flow = triage_as(doc_code() + "\nimport tierflow_no_such_module\n")
    shown = help_of("run", flow)
    assert "Usage: root run [OPTIONS] {FLOW}" in shown
    assert (
        "The reading-triage flow's parameters could not be read: ModuleNotFoundError: "
        "No module named 'tierflow_no_such_module'" in shown
    )


def test_help_shows_a_model_default_as_the_json_that_param_takes() -> None:
    """A pydantic model's default was shown as its repr (`[default: name='essay' weights={}]`), which --param refuses,
    and a set's as `frozenset()`: each is shown as the JSON that `--param NAME=VALUE` reads back."""
    from prefect import flow
    from pydantic import BaseModel

    from tierflow.cli.prefect_ops import describe_params

    class Rubric(BaseModel):
        name: str = "essay"
        weights: dict[str, float] = {}

    @flow
    def marked(vault: str, rubric: Rubric = Rubric(), skip: frozenset[str] = frozenset(), day: date = date(2026, 1, 5)):  # noqa: B008
        pass

    shown = {d.name: d.default for d in describe_params(marked)[0]}
    assert shown == {"vault": None, "rubric": '{"name": "essay", "weights": {}}', "skip": "[]", "day": "2026-01-05"}


def test_a_required_parameter_left_out_is_refused_with_an_example_of_it(documented: str, tmp_path: Path) -> None:
    """It said "give it with --param NAME=VALUE", leaving the user to find the name's spelling and its type."""
    vault = triage_vault(tmp_path)
    for command in (["run"], ["schedule", "--cron", "0 7 * * MON"]):  # each scheduled run would fail without it
        result = CliRunner().invoke(app, [command[0], documented, "--vault", str(vault), *command[1:]])
        assert result.exit_code == 2, result.output
        assert (
            "the documented flow needs 'day': give it with --param NAME=VALUE, for example --param day=2024-01-01 "
            "(`--help` lists its parameters)." in said(result)
        )
        wrong = CliRunner().invoke(app, [command[0], documented, "--vault", str(vault), "--param", "day=16/11/2026"])
        assert wrong.exit_code == 2, wrong.output
        assert "day takes datetime.date, not '16/11/2026' (Input should be a valid date" in said(wrong)
        assert "for example --param day=2024-01-01" in said(wrong)


@pytest.mark.usefixtures("prefect_harness")
def test_an_on_demand_schedule_leaves_a_required_parameter_to_each_run_and_prints_how_to_give_it(
    documented: str, tmp_path: Path
) -> None:
    """`tierflow schedule FLOW` without --cron refused a flow with a required parameter, though each run of an
    on-demand deployment can be given it (`prefect deployment run NAME -p day=...`)."""
    import os
    import shlex
    import subprocess

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL

    vault = triage_vault(tmp_path)
    result = CliRunner().invoke(app, ["schedule", documented, "--vault", str(vault), "--name", "each-day"])
    assert result.exit_code == 0, result.output
    assert "Each run needs day, which the deployment leaves to the run (Prefect refuses a run without it)" in said(
        result
    )
    printed = result.output.strip().splitlines()[-1]
    assert printed == "Run it now: prefect deployment run 'documented/each-day' -p day=2024-01-01"
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("documented/each-day")
        assert deployment.parameters == {"vault": str(vault.resolve())}
        with pytest.raises(PrefectHTTPStatusError, match="'day' is a required property"):
            client.create_flow_run_from_deployment(deployment.id)  # Prefect's own refusal, before any run starts
    # The printed command, as Prefect's CLI reads it, starts a run with the parameter of its type.
    command = shlex.split(printed.removeprefix("Run it now: "))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    ran = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    assert [r.parameters["day"] for r in runs] == ["2024-01-01"]


@pytest.mark.usefixtures("prefect_harness")
def test_schedule_keeps_a_flows_typed_params_as_their_types_json(documented: str, tmp_path: Path) -> None:
    """A deployment's parameters are JSON: `--param` values are read as the flow's signature types them (n the int
    3, tags a list), and kept as JSON (the date as its ISO text, the Path as its text), so a worker's run gets them
    back as the flow's types."""
    from prefect import get_client

    vault = triage_vault(tmp_path)
    params = ["day=2026-11-16", "n=3", "where=Reading/2024", 'tags=["a", "b"]']
    args = ["schedule", documented, "--vault", str(vault), "--name", "typed"]
    result = CliRunner().invoke(app, [*args, *(arg for p in params for arg in ("--param", p))])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("documented/typed")
    assert deployment.parameters == {
        "vault": str(vault.resolve()), "day": "2026-11-16", "n": 3, "where": "Reading/2024", "tags": ["a", "b"],
    }  # fmt: skip
    refused = CliRunner().invoke(app, [*args, "--param", "day=2026-11-16", "--param", "n=3.5"])
    assert refused.exit_code == 2, refused.output
    assert "bad parameter for the documented flow: n takes int, not '3.5'" in said(refused)
    assert "for example --param n=2" in said(refused)
