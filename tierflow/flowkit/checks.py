"""The checks that judge an answer against the vault: its wikilinks, a rubric, a submission's text.

Each is a `core.checks.Check` around what a vault module finds (`VaultNames.problems`, `coverage_problems`,
`quote_problems`, `rewrite_problems`, `not_quoted`), built here so that neither core nor vault imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tierflow.core.checks import Check
from tierflow.vault.links import VaultNames
from tierflow.vault.quotations import not_quoted, problem
from tierflow.vault.rubric import Rubric, coverage_problems, quote_problems, rewrite_problems


def links_resolve(names: VaultNames, texts: Callable[[Any], Iterable[str]]) -> Check:
    """The check `links_resolve`: every link in an answer's `texts` (wikilinks, and Markdown links to notes)
    resolves to exactly one file."""
    return Check("links_resolve", lambda parsed: names.problems("\n".join(texts(parsed))))


def rubric_coverage(rubric: Rubric) -> Check:
    """Check: every criterion once, a level from the rubric, a score inside that level's range."""
    return Check("rubric_coverage", lambda parsed: coverage_problems(rubric, parsed))


def quotes_verbatim(text: str) -> Check:
    """Check: every quotation is in `text` word for word."""
    return Check("quotes_verbatim", lambda parsed: quote_problems(text, parsed))


def inline_quotes_verbatim(prose: Callable[[Any], Iterable[str]], text: str, *also: str, where: str) -> Check:
    """Check: every quotation an answer writes in its `prose` (in quotation marks, or a blockquote) is word for
    word in `text`, which `where` names (or in one of `also`)."""

    def problems(parsed: Any) -> list[str]:
        return [problem(q, where) for written in prose(parsed) for q in not_quoted(written, text, *also)]

    return Check("inline_quotes_verbatim", problems)


rubric_rewrite = Check("rubric_rewrite", rewrite_problems)
"""Check on `tierflow rubric normalise` answers: every criterion has levels, weights and ranges are readable."""
