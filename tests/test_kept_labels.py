"""A student's label (`Student-07`) is given once and kept: it never moves, changes width or goes to another student."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tierflow.vault.labels import LABELS_FILE, keep_labels, read_labels
from tierflow.vault.pseudonyms import Pseudonyms, Student, numbered


def cohort(n: int, start: int = 1) -> list[Student]:
    return [Student(f"s{i:03d}", f"Name{i} Person{i}") for i in range(start, start + n)]


def test_without_kept_labels_the_cohort_is_numbered_by_sorted_id_as_before():
    assert numbered(["s3", "s1", "s2"]) == {"s1": "Student-01", "s2": "Student-02", "s3": "Student-03"}
    assert numbered([f"s{i:03d}" for i in range(100)])["s099"] == "Student-100"
    assert Pseudonyms(cohort(3)).label == {"s001": "Student-01", "s002": "Student-02", "s003": "Student-03"}


def test_kept_labels_keep_their_number_and_width_as_the_cohort_grows_past_99_and_shrinks_below_100():
    first = Pseudonyms(cohort(99)).label
    grown = Pseudonyms([Student("s000", "Early Bird"), *cohort(99)], first).label
    assert {sid: grown[sid] for sid in first} == first and grown["s000"] == "Student-100"

    hundred = Pseudonyms(cohort(100)).label
    assert hundred["s001"] == "Student-001"
    shrunk = Pseudonyms(cohort(98, start=3), hundred).label  # two left: numbered afresh, the width fell to two
    assert shrunk["s003"] == "Student-003" and shrunk["s100"] == "Student-100"
    joined = Pseudonyms([*cohort(98, start=3), Student("s500", "Late Comer")], hundred).label
    assert joined["s500"] == "Student-101"  # after every kept number: the leavers' 001 and 002 go to no one


def test_a_kept_label_is_revealed_and_hidden_as_its_student_and_kept_labels_must_be_labels():
    cohort_ = Pseudonyms([Student("s1", "Ana Lima"), Student("s0", "Zeb Early")], {"s1": "Student-01"})
    assert cohort_.hide("Zeb Early met Ana Lima.") == "Student-02 met Student-01."
    assert cohort_.reveal("Student-02 met Student-01.") == "Zeb Early met Ana Lima."
    with pytest.raises(ValueError, match="not a label"):
        Pseudonyms([Student("s1", "Ana Lima")], {"s1": "Ana"})
    with pytest.raises(ValueError, match="two students have one label"):
        Pseudonyms([Student("s1", "Ana Lima")], {"s1": "Student-01", "s2": "Student-1"})


def test_keep_labels_writes_new_labels_once_and_changes_no_kept_row(tmp_path: Path):
    assert keep_labels(tmp_path, ["s2", "s1"]) == {"s1": "Student-01", "s2": "Student-02"}
    path = tmp_path / LABELS_FILE
    assert path.read_text(encoding="utf-8") == "student_id,label\ns1,Student-01\ns2,Student-02\n"
    written = path.stat().st_mtime_ns
    assert keep_labels(tmp_path, ["s1"]) == {"s1": "Student-01", "s2": "Student-02"}
    assert path.stat().st_mtime_ns == written  # nothing new: not written again
    assert keep_labels(tmp_path, ["s0", "s1"]) == {"s1": "Student-01", "s2": "Student-02", "s0": "Student-03"}
    assert read_labels(tmp_path) == {"s1": "Student-01", "s2": "Student-02", "s0": "Student-03"}
    assert keep_labels(tmp_path, ["s9"], write=False)["s9"] == "Student-04" and "s9" not in read_labels(tmp_path)


def test_the_kept_labels_saved_again_in_excel_with_semicolons_read_the_same(tmp_path: Path):
    (tmp_path / LABELS_FILE).write_bytes(b"\xef\xbb\xbfstudent_id;label\r\ns1;Student-01\r\n")
    assert keep_labels(tmp_path, ["s1", "s2"]) == {"s1": "Student-01", "s2": "Student-02"}


def test_runs_giving_labels_at_once_never_give_one_label_to_two_students_nor_lose_one(tmp_path: Path):
    """Each run reads the file and numbers its own new students: without the lock, two would take one number
    and the later write would drop the earlier run's row."""

    def run(folder: Path, start: threading.Barrier, new: str, given: dict[str, dict[str, str]]) -> None:
        start.wait()
        given[new] = keep_labels(folder, ["a", "b", new])

    for round_ in range(5):
        folder = tmp_path / str(round_)
        folder.mkdir()
        keep_labels(folder, ["a", "b"])
        start = threading.Barrier(8)
        given: dict[str, dict[str, str]] = {}
        threads = [threading.Thread(target=run, args=(folder, start, f"new{n}", given)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kept = read_labels(folder)
        assert len(kept) == 10 and len(set(kept.values())) == 10
        assert all(labels[sid] == kept[sid] for sid, labels in given.items())
