"""A platform's export as a list of entries, whether the lecturer kept the zip or unpacked it into a folder.

Zip entry names are decoded as the platform meant them: an entry without the zip's UTF-8 flag (bit 11) is
read by Python as code page 437, so a UTF-8 name (`duboischloé_…`, as Canvas writes them) would turn into
mojibake; such names are encoded back to their bytes and decoded as UTF-8 when they are valid UTF-8.
A zip entry's date (`Entry.modified`) is the zip's own: a local date and time without a zone, as its writer set it.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from tierflow.core.errors import TierflowError

_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


class ExportError(TierflowError):
    """The export cannot be read at all (not a zip or folder, or not a platform's export)."""


class EntryError(ExportError):
    """One file of the export cannot be read (damaged inside the zip, gone from the folder); the others can."""


@dataclass(frozen=True)
class Entry:
    """One file of the export: its path inside the export (`/`-separated, as the platform named it)."""

    path: str
    size: int
    modified: datetime | None = None
    """The zip entry's date and time (no zone); None in a folder, whose file times are whatever unpacking or
    copying left."""

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


def entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as its writer meant it: UTF-8 even when the zip's UTF-8 flag is missing."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


class Export:
    """The entries of a zip file or a folder, and their bytes; `Export.open(path)` picks which."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self.entries: list[Entry] = []
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.relative_to(path).as_posix()
                if not _junk(rel):
                    self.entries.append(Entry(rel, file.stat().st_size))
        elif zipfile.is_zipfile(path):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, EOFError) as exc:  # its table of contents is there but broken
                raise ExportError(_incomplete(path, str(exc))) from None
            for info in self._zip.infolist():
                name = entry_name(info)
                if info.is_dir() or _junk(name):
                    continue
                self._infos[name] = info
                self.entries.append(Entry(name, info.file_size, _dated(info)))
        elif _zip_start(path):
            raise ExportError(_incomplete(path, "its end, the zip's list of files, is missing"))
        elif path.exists():
            raise ExportError(
                f"{path} is neither a zip file nor a folder. Give the zip the platform downloaded "
                "(Moodle: Download all submissions; Canvas: Download Submissions) or the folder it was unpacked to."
            )
        else:
            raise ExportError(f"{path} does not exist. Give the export zip or the folder it was unpacked to.")

    @classmethod
    @contextmanager
    def open(cls, path: Path) -> Iterator[Export]:
        export = cls(path)
        try:
            yield export
        finally:
            if export._zip is not None:
                export._zip.close()

    def read(self, entry: Entry) -> bytes:
        """The entry's bytes; EntryError, naming the entry and the fix, when they cannot be read."""
        if self._zip is not None:
            info = self._infos[entry.path]
            try:
                return self._zip.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a bad CRC, a broken or cut-off stream
                why = str(exc).replace(f" for file {info.filename!r}", "")
                raise EntryError(
                    f"damaged inside {self.path.name} ({entry.path}: {why}): download the export again"
                ) from None
        try:
            return (self.path / entry.path).read_bytes()
        except OSError as exc:
            raise EntryError(
                f"cannot be read in {self.path} ({entry.path}: {exc.strerror}): unpack or download the export again"
            ) from None


def _dated(info: zipfile.ZipInfo) -> datetime | None:
    """The entry's date and time; None when the zip holds none that is a date (zeros, as some writers leave)."""
    try:
        return datetime(*info.date_time)
    except ValueError:
        return None


def _zip_start(path: Path) -> bool:
    """True when `path` is a file that begins as a zip does (a file's header, or an empty zip's end record)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
    except OSError:
        return False


def _incomplete(path: Path, why: str) -> str:
    """A zip cut short or broken, most often a download that stopped partway: what to do about it."""
    return (
        f"{path} is damaged or incomplete ({why}; {path.stat().st_size:,} bytes): most often a download that "
        "stopped partway. Download it again (Moodle: Download all submissions; Canvas: Download Submissions), "
        "let the download finish, and give the new zip."
    )


def _junk(path: str) -> bool:
    name = PurePosixPath(path).name
    return path.startswith(_JUNK[0]) or name in _JUNK[1:] or name.startswith("._")
