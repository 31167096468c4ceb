"""Stable pseudonyms for students, so identities never leave the machine in a prompt."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Student:
    student_id: str
    name: str = ""


class Pseudonyms:
    """Maps each student to `Student-NN` (by sorted id, so the same cohort always gets the same labels).

    `hide` replaces every roster id, full name and name part in text bound for a model; `reveal` maps the
    labels back when a note is written locally.
    """

    def __init__(self, students: Iterable[Student]) -> None:
        roster = sorted({s.student_id: s for s in students}.values(), key=lambda s: s.student_id)
        width = max(2, len(str(len(roster))))
        self.label = {s.student_id: f"Student-{i:0{width}d}" for i, s in enumerate(roster, start=1)}
        self.students = {s.student_id: s for s in roster}
        replacements: dict[str, str] = {}
        for s in roster:
            label = self.label[s.student_id]
            replacements[s.student_id] = label
            if s.name:
                replacements[s.name] = label
                for part in s.name.split():
                    if len(part) > 2:
                        replacements.setdefault(part, label)
        # Longest first, so a full name is replaced before its parts.
        keys = sorted(replacements, key=len, reverse=True)
        self._hide = (
            re.compile("|".join(rf"(?<!\w){re.escape(k)}(?!\w)" for k in keys), re.IGNORECASE) if keys else None
        )
        self._replacements = {k.casefold(): v for k, v in replacements.items()}
        self._reveal = {label: sid for sid, label in self.label.items()}

    def hide(self, text: str) -> str:
        if self._hide is None:
            return text
        return self._hide.sub(lambda m: self._replacements[m.group(0).casefold()], text)

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
