"""Stable pseudonyms for students, so identities never leave the machine in a prompt."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from tierflow.vault.annotations import word_pattern

_PART_SEPARATORS = re.compile(r"[\s\-\u2010\u2011\u2012\u2013\u2014'\u2019.,\u00b7\u30fb]+")
_INITIAL = re.compile(r"^\w\.?$")


def name_parts(name: str) -> list[str]:
    """The full name, each space-separated part, and the pieces of a hyphenated or apostrophised part
    ("Jean-Luc" -> "Jean", "Luc"; "O'Brien" -> "Brien"), NFC-normalised, lone initials left out."""
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name:
        return []
    parts = [name]
    for word in name.split(" "):
        pieces = [word, *(p for p in _PART_SEPARATORS.split(word) if p != word)]
        parts += [p.strip(".,") for p in pieces if p.strip(".,") and not _INITIAL.match(p)]
    return list(dict.fromkeys(parts))


@dataclass(frozen=True)
class Student:
    student_id: str
    name: str = ""


class Pseudonyms:
    """Maps each student to `Student-NN` (by sorted id, so the same cohort always gets the same labels).

    `hide` replaces every roster id, full name and name part in text bound for a model; `reveal` maps the
    labels back when a note is written locally.

    Every part of every name is replaced, however short ("Li", "Wu", "Ng", "Le", "Do"), case-insensitively
    and in every script: on word boundaries where the script puts spaces between words, and as the exact
    substring in scripts that do not (a Chinese or Japanese name written without spaces). Privacy wins over
    prose: a part that is also a common word is replaced wherever it stands as a word, so "Do the readings"
    reaches the model as "Student-03 the readings" when a student is called Do. Only a lone initial ("J." of
    "J. Smith") is not replaced on its own: it names nobody, and replacing it would replace "a" and "I".
    """

    def __init__(self, students: Iterable[Student]) -> None:
        roster = sorted({s.student_id: s for s in students}.values(), key=lambda s: s.student_id)
        width = max(2, len(str(len(roster))))
        self.label = {s.student_id: f"Student-{i:0{width}d}" for i, s in enumerate(roster, start=1)}
        self.students = {s.student_id: s for s in roster}
        replacements: dict[str, tuple[str, str]] = {}  # casefolded -> (text as written, label)
        for s in roster:
            label = self.label[s.student_id]
            for text in (s.student_id, *name_parts(s.name)):
                replacements.setdefault(text.casefold(), (text, label))
        # Longest first, so a full name is replaced before its parts; one group per text, named by its index.
        ordered = sorted(replacements.values(), key=lambda pair: len(pair[0]), reverse=True)
        self._texts = [text for text, _ in ordered]
        self._labels = [label for _, label in ordered]
        self._hide = (
            re.compile("|".join(f"(?P<n{i}>{word_pattern(t)})" for i, t in enumerate(self._texts)), re.IGNORECASE)
            if self._texts
            else None
        )
        self._reveal = {label: sid for sid, label in self.label.items()}

    def hide(self, text: str) -> str:
        """`text` (NFC-normalised, so that a name typed with combining accents is found) with every id, name
        and name part of the roster replaced by the student's label."""
        if self._hide is None:
            return text
        return self._hide.sub(lambda m: self._labels[int(str(m.lastgroup)[1:])], unicodedata.normalize("NFC", text))

    def reveal(self, text: str, *, by: str = "name") -> str:
        """Labels back to names (or ids, with `by="id"`) for the local note."""

        def back(match: re.Match[str]) -> str:
            sid = self._reveal.get(match.group(0))
            if sid is None:
                return match.group(0)
            student = self.students[sid]
            return student.name if by == "name" and student.name else sid

        return re.sub(r"Student-\d+", back, text)


class NoPseudonyms(Pseudonyms):
    """Pseudonymisation switched off (a local-only tier, or the lecturer's explicit choice)."""

    def __init__(self) -> None:
        super().__init__([])

    def hide(self, text: str) -> str:
        return text
