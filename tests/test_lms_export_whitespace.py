"""Feedback with a tab or another space the PDF font (DejaVu Sans) has no glyph for, as text pasted from Word or
Excel brings: the PDF draws it as spaces (a tab up to the next tab stop, so pasted columns line up), and is written,
not swapped for a .docx (Moodle) or left out of the re-upload zip (Canvas). A character the font cannot draw that
nobody could see in the message (a control character) is named by its code point, with the words around it."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from lms_exports import Student, canvas_zip, docx_bytes, essay, moodle_zip, pdf_bytes
from pypdf import PdfReader
from test_lms_export_cjk import ASSIGNMENT, _vault  # the CJK tests' vault: essay-2, the essay-1 rubric
from test_lms_moodle import draft_text
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms import files
from tierflow.lms.importer import import_submissions

PASTED = "A sound essay.\tWell done."  # two cells of a spreadsheet row, pasted


def _text(data: bytes) -> str:
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _draft(vault: Path) -> None:
    draft = draft_text("1001").replace("A sound essay.", PASTED)
    (vault / ASSIGNMENT / "feedback" / "1001 feedback.md").write_text(draft, encoding="utf-8")


def test_render_draws_a_tab_as_spaces():
    text = _text(files.render(".pdf", "Feedback: Ann", "Tab\there"))
    assert re.search(r"Tab +here", text), text


def test_render_draws_whitespace_the_font_lacks_as_a_space():
    spaces = "a\u3000b\u00a0c\u2009d\u202fe\x1ff\u2002g"  # ideographic, no-break, thin, narrow no-break, ...
    text = _text(files.render(".pdf", "Feedback:\u3000Ann", f"## Overall\n\n{spaces}\n\n- {PASTED}"))
    assert "Ann" in text and re.search(r"a\W+b\W+c\W+d\W+e\W+f\W+g", text), text
    assert re.search(r"A sound essay\. +Well done\.", text), text


def test_without_dejavu_a_tab_is_drawn_as_spaces_too(monkeypatch):
    monkeypatch.setattr(files, "_FONTS", ())  # a machine without fonts-dejavu-core: Helvetica
    text = _text(files.render(".pdf", "Feedback: Ann", f"{PASTED}\n\nx\u3000y\u2028z"))
    assert re.search(r"A sound essay\. +Well done\.", text) and re.search(r"x +y", text), text


def test_tabbed_rows_pasted_from_a_spreadsheet_line_up():
    from fpdf import FPDF

    # Cells ending between the same two tab stops (every 12.7 mm, as in Word), "Use of" just short of one.
    rows = "Argument\t15/20\nStructure\t12/20\nUse of\t9/20\n\n- Argument\t15/20\n- Structure\t12/20"
    page = PdfReader(io.BytesIO(files.render(".pdf", "Feedback: Ann", rows))).pages[0]
    drawn = []  # (where the line starts, in pt from the page's left edge; the line; its font size)
    page.extract_text(visitor_text=lambda text, cm, tm, font, size: drawn.append((tm[4], text, size)))
    measure = FPDF(unit="pt")  # the PDF's own font, measuring the text before each mark
    measure.add_font("Body", fname=str(next(f for f in files._FONTS if f.is_file())))
    marks: dict[bool, list[float]] = {}
    for x, line, size in drawn:
        if mark := re.search(r"\d+/20", line):
            measure.set_font("Body", size=size)
            before = line[: mark.start()]  # the cell and the spaces its tab became
            cell = measure.get_string_width(before.rstrip())
            assert measure.get_string_width(before) - cell >= measure.get_string_width(" "), line  # never glued
            marks.setdefault(line.startswith("•"), []).append(x + measure.get_string_width(before))
    assert len(marks[False]) == 3 and len(marks[True]) == 2, drawn
    for column in marks.values():  # the paragraphs' marks line up, and the bullets': within half a space
        assert max(column) - min(column) <= measure.get_string_width(" ") / 2 + 0.01, (marks, drawn)


def test_a_control_character_the_font_cannot_draw_is_named_by_code_point_and_found_by_its_words():
    with pytest.raises(files.Undrawable) as caught:
        files.render(".pdf", "Feedback: Ann", "## Overall\n\nYour argument is clear. A sound essay.\x07Well done, Ann.")
    said = str(caught.value)
    assert caught.value.characters == "\x07" and "\x07" not in said
    assert "U+0007" in said and "essay." in said and "Well" in said, said
    with pytest.raises(files.Undrawable) as caught:
        files.render(".pdf", "Feedback: 王芳", "Good\ue000work.")
    said = str(caught.value)
    assert said.startswith("the PDF font (DejaVu Sans) cannot draw 王, 芳, U+E000") and "Good" in said, said


def test_moodle_pdf_feedback_with_a_tab_is_written_as_pdf(tmp_path):
    vault = _vault(tmp_path)
    import_submissions(vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", [_liam("essay.docx")]))
    _draft(vault)
    out = tmp_path / "feedback.zip"
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-files"]
    result = CliRunner().invoke(app, [*args, "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0, result.output

    with zipfile.ZipFile(out) as z:
        (name,) = z.namelist()
        text = _text(z.read(name))
    assert name.endswith("_1001_assignsubmission_file/feedback.pdf")
    assert re.search(r"A sound essay\. +Well done\.", text), text
    assert "not .pdf" not in result.stderr and "cannot draw" not in result.stderr
    assert "  1001: sent" in result.stdout


def test_canvas_comment_with_a_tab_for_a_submitted_pdf_is_in_the_reupload_zip(tmp_path):
    vault = _vault(tmp_path)
    import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", [_liam("essay.pdf")]))
    _draft(vault)
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "canvas"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "grades.csv")])
    assert result.exit_code == 0, result.output

    with zipfile.ZipFile(tmp_path / "grades comments.zip") as z:
        assert z.namelist() == ["osullivanliam_1001_9001_essay.pdf"]
        text = _text(z.read("osullivanliam_1001_9001_essay.pdf"))
    assert re.search(r"A sound essay\. +Well done\.", text), text
    assert "SpeedGrader" not in result.stderr and "cannot draw" not in result.stderr


def _liam(file: str) -> Student:
    data = pdf_bytes(["An essay in English."]) if file.endswith(".pdf") else docx_bytes(essay(1))
    return Student("1001", "Liam O'Sullivan", {file: data})
