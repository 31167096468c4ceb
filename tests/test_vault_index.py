"""Tests for tierflow.vault.index: selection, bad notes, incremental rescans, and read-only behaviour."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tierflow.vault import index as vault_index
from tierflow.vault.folder import read_notes
from tierflow.vault.index import NoteMeta, Selection, VaultIndex

WEEK = (dt.date(2026, 11, 16), dt.date(2026, 11, 22))
IN_WEEK = dt.datetime(2026, 11, 18, 12, 0)
LONG_AGO = dt.datetime(2025, 1, 10, 12, 0)


def write(vault: Path, rel: str, content: str | bytes, mtime: dt.datetime | None = IN_WEEK) -> Path:
    """Write a note and set its mtime (local time), as a file synced from elsewhere would have."""
    path = vault / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    if mtime is not None:
        ts = mtime.timestamp()
        os.utime(path, (ts, ts))
    return path


def note(date: str | None = None, tags: str | None = None, body: str = "Body text.\n", **extra: str) -> str:
    """A note with front matter; values are written as raw YAML."""
    lines = [f"{k}: {v}" for k, v in extra.items()]
    if date is not None:
        lines.append(f"date: {date}")
    if tags is not None:
        lines.append(f"tags: {tags}")
    return "---\n" + "\n".join(lines) + "\n---\n\n" + body


YAML_FIX = "correct the YAML between the two `---` lines (Obsidian marks its properties invalid too)"
"""A closed front-matter whose YAML does not parse is skipped naming the fix, not only the line."""

TOO_LARGE_FIX = "to read it, raise [vault] max_note_bytes in .tierflow/config.toml above its size"
"""A 2 MB note skipped as too large did not say which setting reads it."""


def select(
    vault: Path, folders: Sequence[str] = (), tags: Sequence[str] = (), max_note_bytes: int = 1_000_000
) -> Selection:
    """This week's selection from a fresh index (so it starts from the cache file, if any)."""
    index = VaultIndex(vault, max_note_bytes=max_note_bytes)
    return index.select(folders=folders, tags=tags, since=WEEK[0], until=WEEK[1])


def paths(notes: list[NoteMeta]) -> list[str]:
    return [n.path for n in notes]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime_ns of every file under root, dot-folders included."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            out[p.relative_to(root).as_posix()] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
    return out


def test_select_by_folder_matches_whole_path_segments(tmp_path: Path) -> None:
    write(tmp_path, "Reading/Hattie2007.md", note("2026-11-16", title='"The Power of Feedback"'))
    write(tmp_path, "Reading/Books/Brown2014.md", note("2026-11-22"))
    write(tmp_path, "ReadingList/Someday.md", note("2026-11-18"))  # prefix of the name, not a folder
    write(tmp_path, "Daily/2026-11-18.md", note("2026-11-18"))
    write(tmp_path, "Reading/Old.md", note("2026-10-01"))  # outside the window
    write(tmp_path, ".trash/Reading/Deleted.md", note("2026-11-18"))  # dot-folders are never indexed

    sel = select(tmp_path, folders=["Reading"])

    assert paths(sel.notes) == ["Reading/Books/Brown2014.md", "Reading/Hattie2007.md"]
    assert sel.skipped == []
    hattie = sel.notes[1]
    assert hattie.title == "The Power of Feedback"
    assert hattie.date == dt.date(2026, 11, 16)
    assert sel.notes[0].title == "Brown2014"  # no front-matter title: the file stem
    assert sel.stats.files_seen == 3  # only Reading/ was walked
    assert paths(select(tmp_path, folders=["Reading/Books/"]).notes) == ["Reading/Books/Brown2014.md"]


def test_select_by_tag_includes_nested_and_inline_tags(tmp_path: Path) -> None:
    write(tmp_path, "Inbox/a.md", note("2026-11-17", tags="[literature, feedback]"))
    write(tmp_path, "Inbox/b.md", note("2026-11-17", tags='"#literature/book, idea"'))
    write(tmp_path, "Inbox/c.md", note("2026-11-17", body="Read this today #Literature/article/long\n"))
    write(tmp_path, "Inbox/d.md", note("2026-11-17", tags="[literaturereview]"))  # not nested, just similar
    write(
        tmp_path,
        "Inbox/e.md",
        note("2026-11-17", body="`#literature` in code, #2024 is no tag, a#literature\n"),
    )
    write(tmp_path, "Inbox/f.md", note("2026-11-17", tags="\n  - idea\n  - literature"))
    write(tmp_path, "Projects/g.md", note("2026-11-17", tags="[project]"))

    sel = select(tmp_path, tags=["#literature"])

    assert paths(sel.notes) == ["Inbox/a.md", "Inbox/b.md", "Inbox/c.md", "Inbox/f.md"]
    by_path = {n.path: n for n in sel.notes}
    assert by_path["Inbox/b.md"].tags == ("literature/book", "idea")
    assert by_path["Inbox/c.md"].tags == ("Literature/article/long",)
    e = VaultIndex(tmp_path).notes()[4]
    assert e.path == "Inbox/e.md" and e.tags == ()
    # folders OR tags
    both = select(tmp_path, folders=["Projects"], tags=["literature/book"])
    assert paths(both.notes) == ["Inbox/b.md", "Projects/g.md"]


def test_date_window_uses_front_matter_then_mtime(tmp_path: Path) -> None:
    write(tmp_path, "R/fm-in.md", note("2026-11-16"), mtime=LONG_AGO)  # front-matter date wins
    write(tmp_path, "R/fm-out.md", note("2026-11-23"), mtime=IN_WEEK)  # day after `until`
    write(tmp_path, "R/fm-edge.md", note("2026-11-22"), mtime=LONG_AGO)  # `until` is inclusive
    write(tmp_path, "R/created.md", note(created='"2026-11-20T09:30"'), mtime=LONG_AGO)
    write(tmp_path, "R/datetime.md", note("2026-11-19 08:15:00"), mtime=LONG_AGO)
    write(tmp_path, "R/wikidate.md", note('"[[2026-11-21]]"'), mtime=LONG_AGO)
    write(tmp_path, "R/mtime-in.md", note(), mtime=IN_WEEK)  # no date: file mtime
    write(tmp_path, "R/mtime-out.md", note(), mtime=LONG_AGO)
    write(tmp_path, "R/junk-date.md", note("someday"), mtime=IN_WEEK)  # not understood: skipped, in its mtime's week

    sel = select(tmp_path, folders=["R"])

    assert paths(sel.notes) == [
        "R/created.md",
        "R/datetime.md",
        "R/fm-edge.md",
        "R/fm-in.md",
        "R/mtime-in.md",
        "R/wikidate.md",
    ]
    dates = {n.path: n.date for n in sel.notes}
    assert dates["R/created.md"] == dt.date(2026, 11, 20)
    assert dates["R/datetime.md"] == dt.date(2026, 11, 19)
    assert dates["R/mtime-in.md"] is None
    assert [(n.path, n.error) for n in sel.skipped] == [
        ("R/junk-date.md", "date 'someday' not understood; write YYYY-MM-DD")
    ]


def test_a_date_in_another_form_is_read_when_unambiguous_and_never_silently_replaced_by_the_mtime(
    tmp_path: Path,
) -> None:
    for name, value in [
        ("dots", "22.11.2026"),
        ("wikilink", "[[2026-11-22]]"),  # YAML reads it as a list in a list
        ("quoted-wikilink", '"[[2026-11-22]]"'),
        ("minutes", "2026-11-22T10:00"),
    ]:
        write(tmp_path, f"R/{name}.md", note(value), mtime=LONG_AGO)
    write(tmp_path, "R/us.md", note("11/22/2026"), mtime=IN_WEEK)
    write(tmp_path, "R/us-elsewhere.md", note("11/22/2026"), mtime=LONG_AGO)
    write(tmp_path, "R/both.md", note("11/22/2026", created="2026-11-18"), mtime=LONG_AGO)
    write(tmp_path, "R/number.md", note("2026"), mtime=IN_WEEK)

    sel = select(tmp_path, folders=["R"])

    assert {n.path: n.date for n in sel.notes} == {
        f"R/{name}.md": dt.date(2026, 11, 22) for name in ("dots", "minutes", "quoted-wikilink", "wikilink")
    }
    assert [(n.path, n.error) for n in sel.skipped] == [
        ("R/number.md", "date '2026' not understood; write YYYY-MM-DD"),
        ("R/us.md", "date '11/22/2026' not understood; write YYYY-MM-DD"),
    ]


def test_bad_notes_are_skipped_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "R/good.md", note("2026-11-18"))
    write(tmp_path, "R/yaml.md", "---\ntitle: Fine\ntags: [a, b\ndate: 2026-11-18\n---\nBody\n")
    write(tmp_path, "R/baddate.md", "---\ndate: 2026-13-45\n---\nBody\n")
    write(tmp_path, "R/latin1.md", "---\ndate: 2026-11-18\n---\nCaf\xe9 cr\xe8me\n".encode("latin-1"))
    write(tmp_path, "R/binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    write(tmp_path, "R/empty.md", b"")
    write(tmp_path, "R/blank.md", "  \n\n\t\n")
    big = write(tmp_path, "R/huge.md", b"")
    with open(big, "r+b") as fh:
        fh.truncate(3_200_000)  # sparse: cheap to make, and must never be read
    ts = IN_WEEK.timestamp()
    os.utime(big, (ts, ts))
    write(tmp_path, "Templates/Lit.md", note('"{{date:YYYY-MM-DD}}"', tags="[literature]", title='"{{title}}"'))
    write(tmp_path, "R/only-fm.md", note("2026-11-18", body=""))  # fine: only the file-empty case is an error
    write(tmp_path, "Elsewhere/bad.md", b"\x00")  # bad, but not selected

    read: dict[str, int] = {}
    real_open = open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, *args, **kwargs)
        real_read, name = fh.read, os.fspath(file)

        def spy_read(size: int = -1) -> Any:
            got = real_read(size)
            read[name] = read.get(name, 0) + len(got)
            return got

        fh.read = spy_read
        return fh

    monkeypatch.setattr(vault_index, "open", spy_open, raising=False)
    sel = select(tmp_path, folders=["R"], tags=["literature"])

    assert paths(sel.notes) == ["R/good.md", "R/only-fm.md"]
    errors = {n.path: n.error for n in sel.skipped}
    assert list(errors) == [
        "R/baddate.md",
        "R/binary.md",
        "R/blank.md",
        "R/empty.md",
        "R/huge.md",
        "R/latin1.md",
        "R/yaml.md",
        "Templates/Lit.md",
    ]
    assert errors["Templates/Lit.md"] == "unfilled template: title is '{{title}}'"
    assert errors["R/baddate.md"] == f"malformed YAML front-matter: invalid value (month must be in 1..12); {YAML_FIX}"
    assert errors["R/binary.md"] == "binary file"
    assert errors["R/blank.md"] == "empty note"
    assert errors["R/empty.md"] == "empty note"
    assert errors["R/huge.md"] == f"too large (3.2 MB > 1 MB limit); {TOO_LARGE_FIX}"
    assert errors["R/latin1.md"] is not None and errors["R/latin1.md"].startswith("not UTF-8 text")
    yaml_error = errors["R/yaml.md"]
    assert yaml_error is not None and yaml_error.startswith("malformed YAML front-matter: ")
    assert "line 4" in yaml_error  # the line after the unclosed `[a, b`, counted in the file
    # Never read whole: only its head, for the properties that date it (it has none: its file's time).
    assert 0 < sum(n for p, n in read.items() if p.endswith("huge.md")) <= 65_536, read


def test_small_size_limit_is_configurable(tmp_path: Path) -> None:
    size = write(tmp_path, "R/a.md", note("2026-11-18", body="x" * 500)).stat().st_size
    sel = select(tmp_path, folders=["R"], max_note_bytes=200)
    assert [n.error for n in sel.skipped] == [f"too large ({size} bytes > 200 bytes limit); {TOO_LARGE_FIX}"]


@pytest.mark.parametrize("date", ["2026-11-18", "2026-11-15T23:30:00-05:00"], ids=["day", "instant"])
def test_a_note_too_large_to_read_is_skipped_in_the_week_its_date_names_not_its_files(
    tmp_path: Path, date: str
) -> None:
    """A note over max_note_bytes was dated by its file's time: listed as skipped in the week it was last saved,
    and in no run of the week its `date` names. Its head is read for its properties, as every note's date is read:
    23:30 at -05:00 on Sunday 15 November is Monday 16 November in UTC, the week of 16 November."""
    too_large = note(date, tags="[literature]", body="x" * 5_000)
    write(tmp_path, "R/long.md", too_large, mtime=LONG_AGO)
    write(tmp_path, "Inbox/tagged.md", too_large, mtime=IN_WEEK + dt.timedelta(days=7))
    index = VaultIndex(tmp_path, max_note_bytes=1_000, tz=ZoneInfo("UTC"))

    sel = index.select(folders=["R"], tags=["literature"], since=WEEK[0], until=WEEK[1])
    assert sel.notes == []
    assert [n.path for n in sel.skipped] == ["Inbox/tagged.md", "R/long.md"]
    for skipped in sel.skipped:
        assert skipped.error and skipped.error.startswith("too large (") and skipped.error.endswith(TOO_LARGE_FIX)
    saved = (LONG_AGO.date() - dt.timedelta(days=3), LONG_AGO.date() + dt.timedelta(days=3))
    assert index.select(folders=["R"], tags=["literature"], since=saved[0], until=saved[1]).skipped == []
    # Cached as read: a warm scan files it in the same week.
    warm = VaultIndex(tmp_path, max_note_bytes=1_000, tz=ZoneInfo("UTC"))
    assert [n.path for n in warm.select(folders=["R"], tags=[], since=WEEK[0], until=WEEK[1]).skipped] == ["R/long.md"]


def test_a_note_too_large_whose_properties_run_past_its_head_is_skipped_in_the_week_its_date_line_names(
    tmp_path: Path,
) -> None:
    """A note too large to read is dated from its head (its first 64 KB). One whose properties run past the head (a
    long pasted abstract, cut mid-character) had no front-matter in it, so it was filed in the week its file was
    saved: never in a run of the week its `date:` names, though that line is at the head. It is dated by that line."""
    abstract = "é" * 40_000  # 80 KB as UTF-8: the head ends inside it, halfway through a character
    text = f"---\ndate: 2026-11-18\nabstract: {abstract}\n---\n" + "x" * 5_000
    write(tmp_path, "R/long.md", text, mtime=LONG_AGO)
    index = VaultIndex(tmp_path, max_note_bytes=1_000, tz=ZoneInfo("UTC"))

    sel = index.select(folders=["R"], tags=[], since=WEEK[0], until=WEEK[1])
    assert (sel.notes, paths(sel.skipped)) == ([], ["R/long.md"])
    assert sel.skipped[0].error and sel.skipped[0].error.startswith("too large (")
    saved = (LONG_AGO.date() - dt.timedelta(days=3), LONG_AGO.date() + dt.timedelta(days=3))
    assert index.select(folders=["R"], tags=[], since=saved[0], until=saved[1]).skipped == []


def test_a_skipped_notes_time_with_an_offset_is_placed_in_the_vaults_zone_as_a_read_notes_is(tmp_path: Path) -> None:
    """Notes skipped unread (not UTF-8, properties Obsidian shows as text) were filed on the day their `date` was
    typed, where a note read whole is filed on its instant's day in the vault's zone: 23:30 at -05:00 on Sunday 15
    November is Monday 16 November in UTC."""
    late = "2026-11-15T23:30:00-05:00"
    write(tmp_path, "R/latin1.md", f"---\ndate: {late}\n---\nCaf\xe9\n".encode("latin-1"), mtime=LONG_AGO)
    write(tmp_path, "R/blank.md", "\n" + note(late), mtime=LONG_AGO)
    write(tmp_path, "R/read.md", note(late), mtime=LONG_AGO)
    index = VaultIndex(tmp_path, tz=ZoneInfo("UTC"))
    sel = index.select(folders=["R"], tags=[], since=WEEK[0], until=WEEK[1])
    assert (paths(sel.notes), paths(sel.skipped)) == (["R/read.md"], ["R/blank.md", "R/latin1.md"])
    before = index.select(folders=["R"], tags=[], since=dt.date(2026, 11, 9), until=dt.date(2026, 11, 15))
    assert (before.notes, before.skipped) == ([], [])


def test_rescan_reparses_only_changed_notes(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path, f"R/n{i}.md", note("2026-11-18", tags="[literature]"))
    first = VaultIndex(tmp_path).scan()
    assert (first.files_seen, first.parsed, first.reused, first.removed) == (5, 5, 0, 0)

    # A new instance starts from the cache file.
    warm = VaultIndex(tmp_path).scan()
    assert (warm.parsed, warm.reused) == (0, 5)

    later = IN_WEEK + dt.timedelta(hours=1)
    os.utime(tmp_path / "R/n3.md", (later.timestamp(), later.timestamp()))
    index = VaultIndex(tmp_path)
    touched = index.scan()
    assert (touched.parsed, touched.reused) == (1, 4)

    # Same mtime but a different size still counts as a change.
    path = write(tmp_path, "R/n1.md", note("2026-11-19", tags="[literature, extra]"))
    changed = index.scan()
    assert changed.parsed == 1
    assert next(n for n in index.notes() if n.path == "R/n1.md").tags == ("literature", "extra")
    assert path.stat().st_mtime_ns == int(IN_WEEK.timestamp()) * 10**9


def test_deleted_notes_disappear(tmp_path: Path) -> None:
    write(tmp_path, "R/keep.md", note("2026-11-18"))
    write(tmp_path, "R/gone.md", note("2026-11-18"))
    write(tmp_path, "Daily/d.md", note("2026-11-18"))
    index = VaultIndex(tmp_path)
    index.scan()
    (tmp_path / "R/gone.md").unlink()
    (tmp_path / "Daily/d.md").unlink()

    # A folder scan only drops notes under that folder...
    assert index.scan(["R"]).removed == 1
    assert paths(index.notes()) == ["Daily/d.md", "R/keep.md"]
    # ...a full scan drops the rest.
    assert index.scan().removed == 1
    assert paths(index.notes()) == ["R/keep.md"]
    assert paths(select(tmp_path).notes) == ["R/keep.md"]
    cached = json.loads((tmp_path / ".tierflow" / "index.json").read_text(encoding="utf-8"))
    assert list(cached["notes"]) == ["R/keep.md"]


def test_vault_is_untouched_and_the_cache_is_the_only_file_written(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    write(vault, "Reading/a.md", note("2026-11-18", tags="[literature]"))
    write(vault, "Reading/bad.md", "---\n: : :\n---\n")
    write(vault, "Daily/b.md", "No front matter, #literature inline.\r\n")
    write(vault, ".obsidian/app.json", "{}")
    write(vault, "image.png", b"\x89PNG\x00")
    before = snapshot(tmp_path)

    index = VaultIndex(vault)
    index.select(folders=["Reading"], tags=["literature"], since=WEEK[0], until=WEEK[1])
    write(vault, "Reading/a.md", note("2026-11-19", tags="[literature]"), mtime=LONG_AGO)
    before["vault/Reading/a.md"] = snapshot(tmp_path)["vault/Reading/a.md"]
    index.scan()
    VaultIndex(vault).select(folders=["Reading"], tags=[], since=WEEK[0], until=WEEK[1])

    after = snapshot(tmp_path)
    assert set(after) - set(before) == {"vault/.tierflow/index.json"}
    assert {k: after[k] for k in before} == before


def test_custom_cache_path_and_damaged_cache(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    cache = tmp_path / "cache" / "idx.json"
    write(vault, "R/a.md", note("2026-11-18"))
    assert VaultIndex(vault, cache_path=cache).scan().parsed == 1
    assert cache.is_file() and not (vault / ".tierflow").exists()

    cache.write_text("{not json", encoding="utf-8")
    stats = VaultIndex(vault, cache_path=cache).scan()  # a damaged cache costs a cold scan, no error
    assert (stats.parsed, stats.reused) == (1, 0)
    assert json.loads(cache.read_text(encoding="utf-8"))["notes"]["R/a.md"][0] > 0

    # A cache built with another size limit is not reused.
    assert VaultIndex(vault, cache_path=cache, max_note_bytes=10).scan().parsed == 1


def test_missing_vault_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        VaultIndex(tmp_path / "nope").scan()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        VaultIndex(tmp_path).scan(["../outside"])


def test_a_note_that_is_not_utf8_is_dated_by_its_front_matter_in_every_window(tmp_path: Path) -> None:
    latin1 = "---\ndate: 2026-11-18\ntags: [literature]\n---\nCaf\xe9 cr\xe8me\n".encode("latin-1")
    write(tmp_path, "R/Latin1 note.md", latin1, mtime=LONG_AGO)  # its file time says another week
    write(tmp_path, "Elsewhere/Latin1 tagged.md", latin1, mtime=LONG_AGO)  # found by its tag alone
    write(tmp_path, "R/Latin1 undated.md", "Caf\xe9\n".encode("latin-1"), mtime=IN_WEEK)  # dated by file time
    for _ in range(2):  # cold, then from the cache
        sel = select(tmp_path, folders=["R"], tags=["literature"])
        assert paths(sel.skipped) == ["Elsewhere/Latin1 tagged.md", "R/Latin1 note.md", "R/Latin1 undated.md"]
        assert all(n.error and n.error.startswith("not UTF-8 text") for n in sel.skipped)
        index = VaultIndex(tmp_path)
        ago = index.select(folders=["R"], tags=[], since=LONG_AGO.date(), until=LONG_AGO.date())
        assert paths(ago.skipped) == []  # the week of its file time is not its week


def test_an_undated_note_is_dated_by_its_modification_day_in_the_vaults_time_zone(tmp_path: Path) -> None:
    # Monday 23 November 09:00 in Auckland is still Sunday 22 November (20:00) in UTC and in London.
    edited = dt.datetime(2026, 11, 22, 20, 0, tzinfo=dt.UTC)
    write(tmp_path, "R/undated.md", note(), mtime=edited)
    write(tmp_path, "R/dated.md", note("2026-11-22"), mtime=edited)
    for zone, week, expected in [
        ("Pacific/Auckland", (dt.date(2026, 11, 23), dt.date(2026, 11, 29)), ["R/undated.md"]),
        ("Pacific/Auckland", WEEK, ["R/dated.md"]),
        ("Europe/London", WEEK, ["R/dated.md", "R/undated.md"]),
    ]:
        index = VaultIndex(tmp_path, tz=ZoneInfo(zone))
        assert paths(index.select(folders=["R"], tags=(), since=week[0], until=week[1]).notes) == expected
        found = read_notes(tmp_path, "R", max_note_bytes=100_000, since=week[0], until=week[1], timezone=zone)
        assert [n.path for n in found.notes] == expected
    (meta,) = [m for m in index.notes() if m.path == "R/undated.md"]
    assert meta.day_in(ZoneInfo("Pacific/Auckland")) == dt.date(2026, 11, 23)


def test_a_reading_folder_that_cannot_be_read_is_listed_as_skipped_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A week's notes in a subfolder the user cannot read (chmod 000) were passed over in silence. (The suite may
    run as root, who reads any folder: `os.scandir` refuses it as the operating system does for anyone else.)"""
    write(tmp_path, "R/a.md", note("2026-11-18"))
    write(tmp_path, "R/Private/b.md", note("2026-11-18"))
    write(tmp_path, "Elsewhere/Locked/c.md", note("2026-11-18"))
    scandir = os.scandir
    locked = {tmp_path / "R" / "Private", tmp_path / "Elsewhere" / "Locked"}

    def refusing(path):  # noqa: ANN001, ANN202
        if Path(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    sel = select(tmp_path, folders=["R"], tags=["literature"])
    assert paths(sel.notes) == ["R/a.md"]
    errors = {n.path: n.error for n in sel.skipped}
    assert list(errors) == ["R/Private/"]  # a folder outside the reading folders is none of this run's business
    assert errors["R/Private/"] is not None
    assert "Permission denied" in errors["R/Private/"] and "read access" in errors["R/Private/"]


def test_a_note_that_cannot_be_read_is_skipped_naming_the_cause_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod 000 note said only `unreadable: [Errno 13] Permission denied: '/full/path'`, without the fix. (The
    suite may run as root, who reads any file: `open` refuses it as the operating system does for anyone else.)"""
    write(tmp_path, "R/a.md", note("2026-11-18"))
    locked = write(tmp_path, "R/locked.md", note("2026-11-18"))
    real_open = open

    def refusing(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(vault_index, "open", refusing, raising=False)
    sel = select(tmp_path, folders=["R"])
    assert [(n.path, n.error) for n in sel.skipped] == [
        ("R/locked.md", "unreadable (Permission denied); give your user read access to it (chmod u+r) and run again")
    ]
    monkeypatch.setattr(vault_index, "open", real_open, raising=False)  # chmod u+r: its mtime and size are as they were
    again = select(tmp_path, folders=["R"])
    assert paths(again.notes) == ["R/a.md", "R/locked.md"] and again.skipped == []


def test_a_note_opening_with_a_rule_and_no_closing_line_is_read_whole_as_obsidian_shows_it(tmp_path: Path) -> None:
    """Obsidian takes properties only from a `---` first line and a later line that is exactly `---`; without one the
    first `---` is a rule and all of the note is text. Such a note was skipped as unclosed front-matter, and left out
    of the week's reading."""
    write(
        tmp_path, "Reading/Rule first.md", "---\nNote: this week's reading is short.\n\nDialogue matters. #literature\n"
    )
    # After a blank line, or with a space after the opener, Obsidian shows them as text too; such a note is skipped
    # in the week its date meant, with the fix (2020: not this week), not moved into this one by its file's date.
    write(tmp_path, "Reading/Spaced.md", "\n---\ntitle: Not a property\ndate: 2020-01-01\n---\nAfter blank lines.\n")
    write(tmp_path, "Reading/Dotted.md", "---\ntitle: Not a property\ndate: 2020-01-01\n...\nA YAML end is no close.\n")
    write(tmp_path, "Reading/Long rule.md", "---\ndate: 2020-01-01\n----\nFour dashes close nothing.\n")
    write(tmp_path, "Reading/Trailing.md", "--- \ndate: 2020-01-01\n---\nA space after the opener opens nothing.\n")
    write(tmp_path, "Reading/Closed.md", "---\r\ntitle: Closed\r\ndate: 2026-11-17\r\n---\r\nCRLF line ends.\r\n")
    write(tmp_path, "Reading/Bom.md", "\ufeff---\ntitle: With a BOM\ndate: 2026-11-17\n---\nBody.\n")
    sel = select(tmp_path, folders=["Reading"])
    assert sel.skipped == []
    got = {n.path: (n.title, n.date) for n in sel.notes}
    assert got == {
        "Reading/Bom.md": ("With a BOM", dt.date(2026, 11, 17)),
        "Reading/Closed.md": ("Closed", dt.date(2026, 11, 17)),
        "Reading/Dotted.md": ("Dotted", None),  # dated by its file: its `date:` line is text
        "Reading/Long rule.md": ("Long rule", None),
        "Reading/Rule first.md": ("Rule first", None),
    }
    assert [n for n in sel.notes if n.path == "Reading/Rule first.md"][0].tags == ("literature",)


def test_a_closed_front_matter_that_does_not_parse_is_skipped_naming_its_line_and_the_fix(tmp_path: Path) -> None:
    write(tmp_path, "Reading/Broken.md", "---\ntitle: Fine\nauthors: [Hattie, Timperley\n---\nBody.\n")
    write(tmp_path, "Reading/Late close.md", "---\ndate: 2026-11-18\n--- \nkept: [open\n---\nBody.\n")
    sel = select(tmp_path, folders=["Reading"])
    errors = {n.path: n.error for n in sel.skipped}
    broken = errors["Reading/Broken.md"]  # the wording is libyaml's or PyYAML's; the place and the fix are ours
    assert broken is not None and broken.startswith("malformed YAML front-matter: ") and broken.endswith(YAML_FIX)
    assert "flow sequence started at line 3, column 10" in broken
    # `--- ` with a trailing space closes nothing: the front-matter runs to the exact `---`, and its YAML breaks
    late = errors["Reading/Late close.md"]
    assert late is not None and late.startswith("malformed YAML front-matter: ") and late.endswith(YAML_FIX)
    assert "line 3" in late


def test_a_notes_title_is_read_as_its_reader_reads_it(tmp_path: Path) -> None:
    """An unquoted `title: [[Paper]]` (a list in a list, to YAML) was listed as "[['Paper']]" where the note itself
    was read as "Paper"; a quoted `"[[Other]]"` is the link Obsidian shows as "Other"."""
    write(tmp_path, "R/a.md", note("2026-11-18", title="[[Paper]]"))
    write(tmp_path, "R/b.md", note("2026-11-18", title="Yes"))
    write(tmp_path, "R/c.md", note("2026-11-18", title="{given: Jane}"))
    write(tmp_path, "R/d.md", note("2026-11-18", title='"[[Other]]"'))
    assert [n.title for n in select(tmp_path, folders=["R"]).notes] == ["Paper", "Yes", "c", "Other"]


def test_a_date_with_a_time_zone_is_on_its_day_in_the_vaults_zone(tmp_path: Path) -> None:
    """`2026-03-30T00:30:00+02:00` is Sunday 29 March, 22:30, in a UTC vault (the week of Monday 23 March) and Monday
    30 March in Europe/Berlin: a date with an offset is an instant, placed in `[vault] timezone` as file times are.
    `2026-03-29T00:30:00+02:00` is in the week of 23 March in both."""
    write(tmp_path, "R/sunday.md", note("2026-03-29T00:30:00+02:00"))
    write(tmp_path, "R/monday.md", note("2026-03-30T00:30:00+02:00"))
    write(tmp_path, "R/quoted.md", note('"2026-03-30T00:30:00+02:00"'))
    for zone, (first, second) in {
        "UTC": (["R/monday.md", "R/quoted.md", "R/sunday.md"], []),
        "Europe/Berlin": (["R/sunday.md"], ["R/monday.md", "R/quoted.md"]),
    }.items():
        index = VaultIndex(tmp_path, tz=ZoneInfo(zone))
        week = index.select(folders=["R"], tags=[], since=dt.date(2026, 3, 23), until=dt.date(2026, 3, 29))
        after = index.select(folders=["R"], tags=[], since=dt.date(2026, 3, 30), until=dt.date(2026, 4, 5))
        assert (paths(week.notes), paths(after.notes)) == (first, second), zone


def test_properties_obsidian_shows_as_text_skip_the_note_in_the_week_they_meant_naming_the_fix(tmp_path: Path) -> None:
    """A blank line before the first `---` (or a space after one): Obsidian shows the properties as text, so they are
    not read; the note is listed as skipped in the week its `date` meant, with the fix, not dated by its file and
    moved out of its week unseen. A note whose body merely starts with a rule is read."""
    write(tmp_path, "R/blank.md", "\n" + note("2026-11-18", tags="[edu]"), mtime=dt.datetime(2026, 10, 1, 12, 0))
    write(tmp_path, "R/spaced.md", note("2026-11-18").replace("---\n", "--- \n", 1))
    write(tmp_path, "R/rule.md", "\n---\nJust a rule, then text.\n")
    sel = select(tmp_path, folders=["R"])
    errors = {n.path: n.error or "" for n in sel.skipped}
    assert errors["R/blank.md"].startswith("properties not read: Obsidian shows its properties as text")
    assert errors["R/blank.md"].endswith("delete the blank line before line 2")
    assert errors["R/spaced.md"].endswith("delete the spaces on line 1")
    assert paths(sel.notes) == ["R/rule.md"]
