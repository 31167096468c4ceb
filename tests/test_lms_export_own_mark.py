"""A `mark:` the lecturer types in a reviewed draft's front-matter is never silently rescaled into another number.

A bare number (`mark: 15`) is on the rubric's scale and is scaled to the platform's maximum; written with that
maximum (`mark: 15/20`), it is out of the platform's maximum and sent as written, or refused when the maximum is not
the platform's. Every sent line says the conversion in full, and a bare mark that is scaled to a different maximum is
warned about once per export, with both forms.
"""

from __future__ import annotations

import shutil
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from lms_exports import canvas_zip, cohort
from lms_rules import canvas_import_gradebook, moodle_import_worksheet
from test_lms_canvas import ASSIGNMENTS, gradebook_bytes
from test_lms_moodle import STUDENTS, draft_text, worksheet_bytes
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms.drafts import Draft
from tierflow.lms.importer import import_submissions
from tierflow.lms.marks import mark_of, to_platform
from tierflow.vault.rubric import parse_rubric

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
OWN = {"1001": "15/20", "1002": "15", "1003": '"15 / 25"'}
"""1001 out of the platform's 20; 1002 bare, on the rubric's (out of 100); 1003 out of a maximum no platform has."""
WARNING = "a bare `mark:` is on the rubric's scale"


def _vault(tmp_path: Path, *, canvas: bool) -> Path:
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")  # out of 100
    if canvas:
        import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()))
    for sid in ("1001", "1002", "1003", "1004"):
        text = draft_text(sid, mark=OWN.get(sid))
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(text, encoding="utf-8")
    return vault


def _worksheet(maximum: str = "20.00") -> bytes:
    # 1004's Grade is left empty here, so its draft (marked from its criteria) is sent too.
    return worksheet_bytes().replace(b"100.00", maximum.encode()).replace(b'"58.00"', b"").replace(b",58.00,", b",,")


def _cli(vault: Path, *args: str) -> object:
    return CliRunner().invoke(app, ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, *args])


def _lines(out: str) -> dict[str, str]:
    """`  1001: sent, mark ...` lines by student id."""
    found = {}
    for line in out.splitlines():
        sid, sep, rest = line.strip().partition(": sent")
        if sep and sid.isdigit():
            found[sid] = rest
    return found


def _says_the_conversions_and_refuses_1003(out: str, err: str, download: str) -> None:
    lines = _lines(out)
    assert lines["1001"] == ", mark 15/20 (yours, as written) -> 15.00 of 20", out
    assert lines["1002"] == ", mark 15 (yours, of 100 on the rubric) -> 3.00 of 20", out
    # (62 + 66 + 62 + 66) / 4 = 64 on the rubric -> 12.80 of 20
    assert lines["1004"] == ", mark 64 (from the criteria, of 100 on the rubric) -> 12.80 of 20", out
    # Refused: Moodle gets its feedback without a grade, Canvas's gradebook nothing for it.
    assert lines.get("1003", "") == "", out
    # Refused, naming the student, the file and the fix.
    (refused,) = [line for line in err.splitlines() if line.startswith("1003 (Anne-Marie Łukasik)")]
    assert f"{ASSIGNMENT}/feedback/1003 feedback.md" in refused, refused
    assert "`mark: 15 / 25`" in refused and "out of 25" in refused and download in refused, refused
    assert "never rescaled" in refused and "`mark: N/20`" in refused and "`mark: N`" in refused, refused
    # Said once, with both forms and the student it concerns.
    flat = " ".join(err.split())
    assert flat.count(WARNING) == 1, err
    (warning,) = [p for p in err.split("\n") if WARNING in p]
    assert "out of 100" in warning and "`mark: 15` sends 3.00 of 20" in warning and "`mark: 15/20`" in warning
    assert "1002 (Chloé Dubois-Martin)" in warning and "1001" not in warning


def test_moodle_worksheet_out_of_20_takes_a_mark_out_of_20_as_written_and_says_every_conversion(tmp_path):
    vault = _vault(tmp_path, canvas=False)
    downloaded = tmp_path / "Grades-EDU7001-Essay 2-4512.csv"
    downloaded.write_bytes(_worksheet())
    args = ["--to", "moodle-worksheet", "--worksheet", str(downloaded)]

    dry = _cli(vault, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    _says_the_conversions_and_refuses_1003(dry.stdout, dry.stderr, downloaded.name)
    assert not (tmp_path / "Grades-EDU7001-Essay 2-4512 (tierflow).csv").exists()

    real = _cli(vault, *args)
    assert real.exit_code == 0, real.output
    _says_the_conversions_and_refuses_1003(real.stdout, real.stderr, downloaded.name)
    data = (tmp_path / "Grades-EDU7001-Essay 2-4512 (tierflow).csv").read_bytes()
    imported = moodle_import_worksheet(data, participants={sid for sid, _ in STUDENTS}, maximum=20)
    assert imported["1001"]["grade"] == 15.0  # 15 out of 20, as typed: not 3.00
    assert imported["1002"]["grade"] == 3.0  # 15 out of 100, scaled, and said so
    assert imported["1004"]["grade"] == 12.8
    assert "grade" not in imported["1003"] and imported["1003"]["feedback"]  # feedback, and the grade as it was


def test_canvas_gradebook_out_of_20_takes_a_mark_out_of_20_as_written_and_says_every_conversion(tmp_path):
    vault = _vault(tmp_path, canvas=True)
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_bytes())  # Essay 2's Points Possible: 20
    args = ["--to", "canvas", "--gradebook", str(downloaded), "--column", "4512"]

    dry = _cli(vault, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    _says_the_conversions_and_refuses_1003(dry.stdout, dry.stderr, "Points Possible")
    assert not (tmp_path / "grades (tierflow).csv").exists()

    real = _cli(vault, *args)
    assert real.exit_code == 0, real.output
    _says_the_conversions_and_refuses_1003(real.stdout, real.stderr, "Points Possible")
    grades = canvas_import_gradebook((tmp_path / "grades (tierflow).csv").read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1001"]["4512"] == "15"
    assert grades["1002"]["4512"] == "3"
    assert grades["1004"]["4512"] == "12.8"
    assert grades["1003"]["4512"] == ""  # refused: the cell stays as downloaded


def test_no_warning_when_the_rubric_and_the_platform_share_a_maximum(tmp_path):
    vault = _vault(tmp_path, canvas=False)
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(_worksheet("100.00"))
    result = _cli(vault, "--to", "moodle-worksheet", "--worksheet", str(downloaded), "--dry-run")
    assert result.exit_code == 0, result.output
    assert WARNING not in " ".join(result.stderr.split())
    lines = _lines(result.stdout)
    assert lines["1002"] == ", mark 15 (yours, of 100 on the rubric) -> 15.00 of 100"
    assert lines["1001"] == ""  # 15/20 is no mark out of 100: refused, never rescaled to 75
    assert "`mark: N/100`" in result.stderr


RUBRIC = parse_rubric("## Method (20 marks)\n\n- Excellent (17-20): x\n- Good (10-16.5): y\n")


@pytest.mark.parametrize("written", ["15/20", "15 / 20", "15/20.00", "15,0/20"])
def test_a_mark_written_out_of_the_platforms_maximum_is_sent_as_written(written):
    mark = mark_of(RUBRIC, Draft("1", "x", {"mark": written}, ""))
    assert (mark.value, mark.out_of, mark.source) == (15, 20, "your mark")
    assert to_platform(mark, 20.0, 2) == (Decimal("15.00"), False)
    assert to_platform(mark, 40.0, 2) == (None, False)  # never rescaled to 30


def test_a_bare_mark_stays_on_the_rubrics_scale():
    from tierflow.lms.marks import scaled

    mark = mark_of(RUBRIC, Draft("1", "x", {"mark": 15}, ""))
    assert (mark.value, mark.scale, mark.out_of) == (15, 20, None)
    assert to_platform(mark, 100.0, 2) == (Decimal("75.00"), False)
    assert mark_of(RUBRIC, Draft("1", "x", {"mark": "15/0"}, "")).problems
    assert mark_of(RUBRIC, Draft("1", "x", {"mark": "1/2/3"}, "")).value is None
    assert Fraction(15) == mark_of(RUBRIC, Draft("1", "x", {"mark": "15"}, "")).value
    assert scaled(mark, 100.0) and not scaled(mark, 20.0)
    assert not scaled(mark_of(RUBRIC, Draft("1", "x", {"mark": 0}, "")), 100.0)  # 0 is 0 on any scale
    (problem,) = mark_of(RUBRIC, Draft("1", "x", {"mark": "15 of 20"}, "")).problems
    assert "`mark: 15 of 20`" in problem and "`mark: 15/20`" in problem and "out of 20" in problem


def test_a_mark_outside_the_maximum_is_told_apart_from_one_that_rounding_carries_past_it():
    from tierflow.lms.marks import conversion, on_platform

    above = on_platform(mark_of(RUBRIC, Draft("1", "x", {"mark": "22/20"}, "")), 20.0, 2)
    assert (above.grade, above.rounded, above.outside) == (Decimal("20.00"), Decimal("22.00"), "above")
    # At the maximum, with more places than --decimals: 20.5 rounds to 21, so the most within it is sent, and said.
    mark = mark_of(RUBRIC, Draft("1", "x", {"mark": "20.5/20.5"}, ""))
    within = on_platform(mark, 20.5, 0)
    assert (within.grade, within.rounded, within.outside) == (Decimal("20"), Decimal("21"), "")
    assert conversion(mark, within.grade, 20.5, within.said()) == (
        "20.5/20.5 (yours, as written) -> 20 of 20.5 (rounded to whole marks it is 21, above 20.5: sent as 20, "
        "the highest whole mark within 20.5)"
    )
    assert to_platform(mark, 20.5, 1) == (Decimal("20.5"), False)
    assert on_platform(mark_of(RUBRIC, Draft("1", "x", {"mark": "-1/20"}, "")), 20.0, 2).grade == Decimal("0.00")


def _over(tmp_path: Path, canvas: bool, mark: str, *args: str) -> tuple[Path, object]:
    vault = _vault(tmp_path, canvas=canvas)
    draft = vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.write_text(draft_text("1001", mark=mark), encoding="utf-8")
    downloaded = tmp_path / "grades.csv"
    if canvas:
        downloaded.write_bytes(gradebook_bytes())
        target = ["--to", "canvas", "--gradebook", str(downloaded), "--column", "4512"]
    else:
        downloaded.write_bytes(_worksheet())
        target = ["--to", "moodle-worksheet", "--worksheet", str(downloaded)]
    result = _cli(vault, *target, *args)
    assert result.exit_code == 0, result.output
    return tmp_path / "grades (tierflow).csv", result


def _said(result: object, sid: str = "1001") -> str:  # noqa: ANN001
    """The stderr paragraph about student `sid`, on one line."""
    flat = " ".join(result.stderr.split())
    (found,) = [p for p in flat.split(f"{sid} (Liam O'Sullivan)")[1:] if "feedback.md" in p]
    return found


def test_canvas_keeps_a_mark_above_points_possible_as_extra_credit_and_says_so(tmp_path):
    written, result = _over(tmp_path, True, "21/20")
    assert _lines(result.stdout)["1001"] == ", mark 21/20 (yours, as written) -> 21.00 of 20 (above the maximum 20)"
    said = _said(result)
    assert f"`mark: 21/20` in {ASSIGNMENT}/feedback/1001 feedback.md is above the 20 points possible" in said
    assert "sent as 21" in said and "extra credit, 1 over" in said and "correct it there" in said, said
    summary = " ".join(result.stderr.split())
    assert "1 mark(s) above the 20 points possible sent as written, which Canvas keeps as extra credit: 1001" in summary
    # What Canvas's Grades -> Import reads: 21, which it keeps (it takes scores above points possible).
    grades = canvas_import_gradebook(written.read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1001"]["4512"] == "21"


def test_moodle_refuses_a_mark_above_its_maximum_as_its_upload_would_naming_the_draft_and_the_fix(tmp_path):
    written, result = _over(tmp_path, False, "21/20")
    assert _lines(result.stdout)["1001"] == ""  # its feedback, and no grade
    said = _said(result)
    assert f"`mark: 21/20` in {ASSIGNMENT}/feedback/1001 feedback.md is above grades.csv's Maximum Grade (20)" in said
    assert "skips" in said and "no grade is sent" in said and "Write a mark from 0 to 20" in said, said
    assert "Unlimited grades" in said and "Its feedback is sent" in said, said
    # Moodle's upload: no grade change for 1001 (it would have skipped 21 anyway, or taken a 20 nobody wrote).
    imported = moodle_import_worksheet(written.read_bytes(), participants={sid for sid, _ in STUDENTS}, maximum=20)
    assert "grade" not in imported["1001"] and imported["1001"]["feedback"]


def test_a_mark_outside_the_maximum_only_before_rounding_is_within_it_as_it_will_be_written():
    from tierflow.lms.marks import on_platform

    # 20.001 of 20 is written 20.00 at 2 places, which Moodle's upload takes: not above.
    mark = mark_of(RUBRIC, Draft("1", "x", {"mark": "20.001/20"}, ""))
    found = on_platform(mark, 20.0, 2)
    assert (found.grade, found.rounded, found.outside, found.said()) == (Decimal("20.00"), Decimal("20.00"), "", "")
    # Still above once rounded (20.001 at 3 places; 20.005 at 2 is 20.01, half up): as before.
    assert on_platform(mark, 20.0, 3).outside == "above"
    assert on_platform(mark_of(RUBRIC, Draft("1", "x", {"mark": "20.005/20"}, "")), 20.0, 2).outside == "above"
    # Below 0 the same way: -0.001 is written 0.00.
    below = on_platform(mark_of(RUBRIC, Draft("1", "x", {"mark": "-0.001/20"}, "")), 20.0, 2)
    assert (below.grade, below.outside) == (Decimal("0.00"), "")
    assert on_platform(mark_of(RUBRIC, Draft("1", "x", {"mark": "-0.005/20"}, "")), 20.0, 2).outside == "below"


@pytest.mark.parametrize("written", ["20.001/20", "-0.001/20"], ids=["above", "below"])
def test_moodle_takes_a_mark_that_rounds_to_within_its_maximum_as_its_upload_would(tmp_path, written):
    downloaded, result = _over(tmp_path, False, written)
    expected = "20.00" if written.startswith("20") else "0.00"
    assert _lines(result.stdout)["1001"] == f", mark {written} (yours, as written) -> {expected} of 20", result.output
    assert "Upload grading worksheet skips" not in result.stderr, result.stderr
    imported = moodle_import_worksheet(downloaded.read_bytes(), participants={sid for sid, _ in STUDENTS}, maximum=20)
    assert imported["1001"]["grade"] == float(expected) and imported["1001"]["feedback"], imported["1001"]


def test_canvas_sends_a_mark_that_rounds_to_points_possible_as_no_extra_credit(tmp_path):
    written, result = _over(tmp_path, True, "20.001/20")
    assert _lines(result.stdout)["1001"] == ", mark 20.001/20 (yours, as written) -> 20.00 of 20", result.output
    assert "extra credit" not in result.stderr, result.stderr
    grades = canvas_import_gradebook(written.read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1001"]["4512"] == "20"


@pytest.mark.parametrize("canvas", [False, True], ids=["moodle", "canvas"])
def test_a_maximum_with_more_places_than_decimals_is_said_once_the_same_way(tmp_path, canvas):
    vault = _vault(tmp_path, canvas=canvas)
    draft = vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.write_text(draft_text("1001", mark="20.5/20.5"), encoding="utf-8")
    downloaded = tmp_path / "grades.csv"
    if canvas:
        downloaded.write_bytes(gradebook_bytes().replace(b",20,10,", b",20.5,10,"))
        target = ["--to", "canvas", "--gradebook", str(downloaded), "--column", "4512"]
    else:
        downloaded.write_bytes(_worksheet("20.50"))
        target = ["--to", "moodle-worksheet", "--worksheet", str(downloaded)]
    result = _cli(vault, *target, "--decimals", "0")
    assert result.exit_code == 0, result.output
    line = _lines(result.stdout)["1001"]
    assert line == (
        ", mark 20.5/20.5 (yours, as written) -> 20 of 20.5 (rounded to whole marks it is 21, above 20.5: sent as "
        "20, the highest whole mark within 20.5)"
    ), line
    said = _said(result)
    assert "outside" not in said and "0-20.5" not in said, said
    assert "rounded to whole marks it is 21, above 20.5: sent as 20" in said and "`--decimals 1`" in said, said


@pytest.mark.parametrize("written", ["15/0", "fifteen"])
def test_a_mark_that_is_no_mark_is_refused_naming_the_draft_file_and_the_fix(tmp_path, written):
    vault = _vault(tmp_path, canvas=False)
    draft = vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.write_text(draft_text("1001", mark=written), encoding="utf-8")
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(_worksheet())
    result = _cli(vault, "--to", "moodle-worksheet", "--worksheet", str(downloaded), "--dry-run")
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)["1001"] == ""  # feedback, no grade
    (refused,) = [line for line in result.stderr.splitlines() if line.startswith("1001 (Liam O'Sullivan)")]
    assert f"`mark: {written}`" in refused and "`mark: 15/20`" in refused, refused
    assert f"{ASSIGNMENT}/feedback/1001 feedback.md" in refused, refused
