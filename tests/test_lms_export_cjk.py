"""Feedback for a student whose name or quoted words are Chinese, Japanese or Korean: the PDF font (DejaVu Sans)
has no glyphs for them, and fpdf2 drops a character it cannot draw, so a PDF would lose them. Nothing is lost:
Moodle gets that student's feedback as .docx (Word and LibreOffice draw CJK with the reader's fonts), Canvas (which
names a comment file after the submitted PDF) gets no file for that student, and the command says which and why."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import docx
import pytest
from lms_exports import Student, canvas_zip, docx_bytes, essay, moodle_zip, pdf_bytes
from pypdf import PdfReader
from test_lms_moodle import draft_text
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms import files
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
NAME = "王芳"
QUOTE = "王芳，你的论点很清楚。"
KOREAN = "김민준"


def _students(file: tuple[str, bytes]) -> list[Student]:
    return [
        Student("1001", "Liam O'Sullivan", {"essay.docx": docx_bytes(essay(1))}),
        Student("1008", NAME, dict([file])),
    ]


def _vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    return vault


def _drafts(vault: Path) -> None:
    feedback = vault / ASSIGNMENT / "feedback"
    (feedback / "1001 feedback.md").write_text(draft_text("1001"), encoding="utf-8")
    wang = draft_text("1001").replace("Liam O'Sullivan", NAME).replace('"1001"', '"1008"')
    wang = wang.replace("A sound essay.", f"{QUOTE} Your argument is clear. You cite {KOREAN} (2020).")
    (feedback / "1008 feedback.md").write_text(wang, encoding="utf-8")


def _text(name: str, data: bytes) -> str:
    if name.endswith(".pdf"):
        return "".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
    return "\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)


def test_moodle_pdf_feedback_for_a_cjk_student_is_written_as_docx_and_the_command_says_so(tmp_path):
    vault = _vault(tmp_path)
    export = moodle_zip(tmp_path / "export.zip", _students(("essay.docx", docx_bytes([f"{NAME}：我的论文。"]))))
    import_submissions(vault, ASSIGNMENT, export)
    _drafts(vault)
    out = tmp_path / "feedback.zip"
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-files"]
    result = CliRunner().invoke(app, [*args, "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0, result.output

    with zipfile.ZipFile(out) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    (liam,) = [n for n in entries if "_1001_" in n]
    (wang,) = [n for n in entries if "_1008_" in n]
    assert liam.endswith("/feedback.pdf") and "Argument and critical evaluation" in _text(liam, entries[liam])
    assert wang == f"{NAME}_1008_assignsubmission_file/feedback.docx"
    text = _text(wang, entries[wang])
    assert f"Feedback: {NAME}" in text and QUOTE in text and KOREAN in text and "Your argument is clear." in text
    said = " ".join(result.stderr.split())
    assert f"1008 ({NAME}): feedback.docx, not .pdf" in said and "王" in said and "cannot draw" in said
    assert "  1008: sent" in result.stdout


def test_canvas_pdf_comment_for_a_cjk_student_is_not_written_and_the_command_says_to_paste_it(tmp_path):
    vault = _vault(tmp_path)
    submitted = ("essay.pdf", pdf_bytes(["An essay in English."]))
    import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", _students(submitted)))
    _drafts(vault)
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "canvas"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "grades.csv")])
    assert result.exit_code == 0, result.output

    with zipfile.ZipFile(tmp_path / "grades comments.zip") as z:
        names = z.namelist()
    assert names == ["osullivanliam_1001_9001_essay.docx"]  # no PDF without her name and quotation
    said = " ".join(result.stderr.split())
    assert "1008: comment not in the re-upload zip" in said and "王" in said and "SpeedGrader" in said


def test_render_refuses_a_pdf_that_would_lose_characters_and_names_them():
    with pytest.raises(files.Undrawable) as caught:
        files.render(".pdf", f"Feedback: {NAME}", f"## Overall\n\n{QUOTE} Your argument is clear.")
    assert set(caught.value.characters) >= set(NAME) and "王" in str(caught.value)
    latin = files.render(".pdf", "Feedback: Chloé Dubois-Martin", "## Overall\n\nŁukasik — “clear”.")
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(latin)).pages)
    assert "Chloé Dubois-Martin" in text and "Łukasik" in text


def test_without_dejavu_a_letter_helvetica_cannot_approximate_is_refused_not_dropped(monkeypatch):
    monkeypatch.setattr(files, "_FONTS", ())  # a machine without fonts-dejavu-core: the core fonts, Latin-1 only
    accents = files.render(".pdf", "Feedback: Chloé Dubois-Martin", "Dvořák — “clear”.")
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(accents)).pages)
    assert "Chloé Dubois-Martin" in text and "Dvorák" in text  # an accent lost, as before; the letter kept
    with pytest.raises(files.Undrawable, match="Helvetica.*cannot draw Ł, 王"):
        files.render(".pdf", "Feedback: Anne-Marie Łukasik", f"{NAME}.")
