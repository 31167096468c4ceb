"""The lecturer's reviewed drafts: found by their front-matter, never by file name; turned into what a student reads.

A draft is exported only when its front-matter says `status: reviewed` (the lecturer sets it). Drafts are the
notes under `<assignment>/feedback/` with a `student_id` in their front-matter, whatever they are called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import frontmatter
import yaml
from markdown_it import MarkdownIt

REVIEWED = "reviewed"
_CALLOUT = re.compile(r"^>\s*\[!\w+\]")


@dataclass(frozen=True)
class Draft:
    student_id: str
    path: str
    """Vault-relative."""
    metadata: dict[str, Any]
    body: str

    @property
    def name(self) -> str:
        title = str(self.metadata.get("title") or "")
        return title.removeprefix("Feedback: ").strip() if title.startswith("Feedback: ") else ""

    def student_text(self) -> str:
        """The body as the student should read it: tierflow's notes to the lecturer (callouts) left out."""
        out: list[str] = []
        skipping = False
        for line in self.body.splitlines():
            if _CALLOUT.match(line):
                skipping = True
                continue
            if skipping and line.startswith(">"):
                continue
            skipping = False
            out.append(line)
        return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()

    def html(self) -> str:
        """The student text as HTML on one line (Moodle stores feedback comments as HTML)."""
        rendered = MarkdownIt("commonmark", {"html": False}).render(self.student_text())
        return re.sub(r">\s*\n\s*<", "><", rendered.strip()).replace("\n", "<br>")


@dataclass
class Drafts:
    reviewed: dict[str, Draft] = field(default_factory=dict)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """(draft path, why) for every draft not exported."""
    students: set[str] = field(default_factory=set)
    """Every student with a draft, reviewed or not."""

    def why_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, why in self.left_out:
            key = why.split(";")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


def collect(vault: Path, folder: str) -> Drafts:
    """Every draft under `folder/feedback/`: the reviewed ones by student id, the others with the reason."""
    out = Drafts()
    root = vault / folder / "feedback"
    candidates: dict[str, list[Draft]] = {}
    for path in sorted(root.rglob("*.md")) if root.is_dir() else []:
        rel = path.relative_to(vault).as_posix()
        try:
            post = frontmatter.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError):
            out.left_out.append((rel, "unreadable front-matter; fix the YAML between the --- lines"))
            continue
        sid = str(post.metadata.get("student_id") or "").strip()
        if not sid:
            continue  # the cohort summary and other notes: not a student's draft
        out.students.add(sid)
        status = str(post.metadata.get("status") or "").strip().lower()
        if status != REVIEWED:
            out.left_out.append((rel, f"not reviewed (status: {status or 'none'}); set `status: reviewed` to send it"))
            continue
        candidates.setdefault(sid, []).append(Draft(sid, rel, dict(post.metadata), post.content))
    for sid, found in candidates.items():
        if len(found) > 1:
            paths = ", ".join(d.path for d in found)
            out.left_out += [(d.path, f"two reviewed drafts for student {sid} ({paths}); keep one") for d in found]
            continue
        out.reviewed[sid] = found[0]
    return out
