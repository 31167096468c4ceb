"""The notices an import writes into a submission note for the lecturer, and the student's text without them.

`tierflow import submissions` quotes what a file hid from its reader (white, 1-px or hidden text) in a warning
callout titled `HIDDEN_CALLOUT`. The lecturer reads it in Obsidian; a run sends neither the notice nor the hidden
text to a model (the student is marked on what a reader sees), and checks quotations against what it sent. The
prompt-injection check still reads the hidden passages (`split_notices`), so a draft flags them.
"""

from __future__ import annotations

from tierflow.vault.annotations import CALLOUT_HEAD, without_code

HIDDEN_CALLOUT = "Hidden text in the original"


def split_notices(body: str) -> tuple[str, tuple[str, ...]]:
    """A submission note's body without the import's hidden-text notices, and the passages they quote (one a
    line, `> ` dropped). Both as written in the note: `note_text` reads them as a run does. The blank line the
    import wrote before a notice goes with it; a callout in code is the student's, and kept."""
    if HIDDEN_CALLOUT not in body:
        return body, ()
    kept: list[str] = []
    passages: list[str] = []
    inside = False
    for line, masked in zip(body.split("\n"), without_code(body).split("\n"), strict=True):
        quoted = masked.lstrip().startswith(">")
        head = CALLOUT_HEAD.match(masked.lstrip()[1:].strip()) if quoted else None
        if head:
            kind, _, title = head.groups()
            inside = kind.casefold() == "warning" and title.strip().startswith(HIDDEN_CALLOUT)
            if inside:
                if kept and not kept[-1].strip():
                    kept.pop()
                continue
        elif inside and quoted:
            passage = line.lstrip()[1:].removeprefix(" ")
            if passage.strip():
                passages.append(passage)
            continue
        else:
            inside = False
        kept.append(line)
    return "\n".join(kept), tuple(passages)
