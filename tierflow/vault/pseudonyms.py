"""Stable pseudonyms for students, so identities never leave the machine in a prompt."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from tierflow.vault.annotations import boundary_after, boundary_before

# Brackets and quotes too, should one stand apart from a group `_GROUP` finds (a stray bracket).
_PART_SEPARATORS = re.compile(
    r"[\s\-\u2010\u2011\u2012\u2013\u2014'\u2019.,\u00b7\u30fb()\[\]"
    r'"\u2018\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a]+'
)
_INITIAL = re.compile(r"^[\w?]\.?$")  # "J.", and a lone `?`, a letter a roster lost

# What a roster name holds in brackets or quotes: `Wei (David) Zhang`, `Robert "Bob" Smith` (straight, curly, low
# German „Bob“, guillemets), `Jane [[Okafor]]`, `Anna Berg (Exchange)`, `Jane Doe [TA]`. A straight `'` opens one
# only where no letter stands before it, so the apostrophe of O'Brien opens none. A group still open where the
# name ends (a cell cut short) runs to the end.
_GROUP = re.compile(
    r"\[\[(?P<links>[^\[\]]*)(?:\]\]|$)"
    r"|\[(?P<square>[^\[\]]*)(?:\]|$)"
    r"|\((?P<round>[^()]*)(?:\)|$)"
    r"|\{(?P<curly>[^{}]*)(?:\}|$)"
    r"|(?<!\w)'(?P<straight>[^']*)(?:'(?!\w)|$)"
    r'|["\u201c\u201d\u201e\u201f\u00ab\u00bb](?P<double>[^"\u201c\u201d\u201e\u201f\u00ab\u00bb]*)'
    r'(?:["\u201c\u201d\u201e\u201f\u00ab\u00bb]|$)'
    r"|[\u2018\u201a\u201b\u2039\u203a](?P<single>[^\u2018\u2019\u201a\u201b\u2039\u203a]*)"
    r"(?:[\u2018\u2019\u201b\u2039\u203a]|$)"
)
_GROUP_WORDS = re.compile(r"[\s,;:/&+|]+")  # "(Part-time, Year 2)", "(PT/Online)", "(Erasmus+)", "(aka: Bob)"

_NOTES_BY_KIND = {
    # What an institution's records, or the lecturer, add to a name in a roster or a Moodle or Canvas name field.
    "how a student studies, or where from": "exchange erasmus mobility abroad study visiting visitor international "
    "incoming inbound outgoing guest associate occasional audit auditing auditor audits observer listener gasthorer "
    "non-credit noncredit credit part-time full-time parttime fulltime pt ft online distance remote blended hybrid "
    "campus on-campus off-campus evening weekend placement apprentice apprenticeship sandwich intercalating "
    "intercalated mature direct entry transfer transferred foundation pathway joint honours honors sponsored",
    "level, programme and cohort": "ug pg pgt pgr undergraduate postgraduate undergrad postgrad graduate grad msc "
    "bsc meng mres mphil phd dphil mba llm llb pgce pgdip pgcert year yr level cohort semester sem term trimester "
    "group section seminar tutorial lab class module course",
    # Moodle's "Suspended" and "Not current", Canvas's "inactive" and "concluded", a registry's "withdrawn".
    "where the enrolment stands": "withdrawn withdrew withdrawing withdrawal dropped left suspended suspension "
    "inactive active deferred deferral interrupted interruption intermitting intermission leave absence lapsed "
    "expired concluded completed not current pending enrolled unenrolled registered unregistered provisional "
    "conditional late extension ext resit resits resitting reassessment repeat repeating retake retaking referral "
    "referred carry carried over mitigation mitigating ec ecs extenuating circumstances",
    "support a student has": "dsa rap raps isp sld spld dyslexia dyslexic adjustment adjustments reasonable "
    "accessibility disability support extra time",
    "someone who is not a student, or a test account": "gta tutor teacher instructor lecturer demonstrator "
    "assistant teaching marker grader moderator examiner staff admin test student students learner mentor convenor "
    "coordinator dummy demo",
    "the rest of a note": "alumni alumnus returning returner readmitted only no non new old none id tbc tbd see also "
    "duplicate copy account other name former",
}
_NAME_FOLLOWS = frozenset(["nee", "aka", "known", "as", "preferred", "pref", "formerly", "previously", "nickname"])
"""Words before another name of the student ("née Jones", "aka Bob", "known as Bob", "preferred: Bob"): the words
after them are names, whatever `ROSTER_NOTES` holds ("née Guest")."""
ROSTER_NOTES = frozenset(word for words in _NOTES_BY_KIND.values() for word in words.split()) | _NAME_FOLLOWS
"""Words a roster puts in brackets beside a name that are not a name (folded, lower-cased): `name_parts` leaves
them out, in any case ("(Exchange)", "(EXCHANGE)", "(withdrawn)")."""
_NOTES_UNLESS_A_NAME = frozenset({"ta", "ma", "ba"})
"""Notes ("TA", "MA", "BA") that are names too (Tạ, Mã, Bá): a note where not written as a name ("Ta")."""


def _identifies(word: str) -> bool:
    """Whether `word` is a student number ("20231234", "Z20231234"; not one of `_SHORT_NUMBER`'s digits, a year or
    a group) or an email address."""
    number = word.isdecimal() and not _SHORT_NUMBER.fullmatch(word)
    return number or _PREFIXED_NUMBER.fullmatch(word) is not None or "@" in word.strip("@")


def _pieces(word: str) -> list[str]:
    """`word` and the pieces of it hyphens, apostrophes and dots part ("Jean-Luc" -> "Jean", "Luc"; "O'Brien" ->
    "Brien"), lone initials (and a lone `?`) left out."""
    pieces = [word, *(p for p in _PART_SEPARATORS.split(word) if p != word)]
    return [p.strip(".,") for p in pieces if p.strip(".,") and not _INITIAL.match(p)]


def _names_someone(word: str, lower_case_roster: bool, introduced: bool = False) -> bool:
    """Whether `word`, in brackets or quotes in a roster name, is another name of the student (a nickname, a
    former name) or identifies them (a student number, an email address), rather than a note about them.

    A name is letters (a hyphen, an apostrophe or a dot between them; a `?` for a letter the roster lost),
    capitalised as a name is, or in a script without capitals (张伟), or in lower case where the roster writes the
    whole name so; and not one of `ROSTER_NOTES` ("Ta", written as a name, is one; "TA" is a note), unless
    `introduced` by one of `_NAME_FOLLOWS` ("née Guest")."""
    if _identifies(word):
        return True
    if not all(c.isalpha() or c in "-'\u2019." or c == LOST or unicodedata.combining(c) for c in word):
        return False  # "2", "2nd", "25%": a year, a group, extra time
    key = fold(word).lower().strip(".")
    if key in _NAME_FOLLOWS:
        return False  # "as" of "known as Bob" names no one, lower-case roster or not
    if not introduced and (key in ROSTER_NOTES or all(piece in ROSTER_NOTES for piece in key.split("-"))):
        return False
    if not introduced and key in _NOTES_UNLESS_A_NAME and not (word[0].isupper() and word[1:].islower()):
        return False
    first = next((c for c in word if c.isalpha() or c == LOST), None)
    if first is None:
        return False  # "-", "'": no letter
    return first == LOST or first.isupper() or not first.islower() or lower_case_roster


def name_parts(name: str) -> list[str]:
    """The full name, the name without what it holds in brackets or quotes, each space-separated part, and the
    pieces of a hyphenated or apostrophised part ("Jean-Luc" -> "Jean", "Luc"; "O'Brien" -> "Brien"),
    NFC-normalised, lone initials (and a lone `?`) left out.

    What brackets or quotes hold is another name where it is written as one (`_names_someone`): "David" of
    "Wei (David) Zhang", "Bob" of `Robert "Bob" Smith`, "Okafor" of "Jane [[Okafor]]", a student number. Anything
    else is a note about the student ("(Exchange)", "(withdrawn)", "[TA]", "(Part-time, Year 2)"), a part only as
    the roster writes it, brackets and all, so that an essay's "exchange" or "TA" is no name."""
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name:
        return []
    groups = list(_GROUP.finditer(name))
    outside = " ".join(_GROUP.sub(" ", name).split()).strip(" ,;")  # "[[Okafor]], Jane": "Jane"
    parts = [name, outside]
    for word in outside.split(" "):
        parts += _pieces(word)
    lower_case_roster = not any(c.isupper() for c in outside)
    for group in groups:
        parts.append(group.group().strip())
        inner = next(text for text in group.groups() if text is not None)
        words = [w.strip(".,") for w in _GROUP_WORDS.split(inner) if w.strip(".,")]
        after = [False, *(fold(w).lower() in _NAME_FOLLOWS for w in words)]  # "née Guest": "Guest" is a name
        names = [w for w, by in zip(words, after[:-1], strict=True) if _names_someone(w, lower_case_roster, by)]
        if len(names) > 1 and names == words:
            parts.append(" ".join(names))  # "(Mary Kate)": the name as one
        for word in names:
            parts += identifier_forms(word) if _identifies(word) else _pieces(word)
    return list(dict.fromkeys(p for p in parts if p))


_TRANSLITERATED = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"}
    # Danish and Norwegian ("Søren Kjær" -> "Soeren Kjaer", "Åsa" -> "Aasa").
    | {"ø": "oe", "Ø": "Oe", "æ": "ae", "Æ": "Ae", "å": "aa", "Å": "Aa"}
)
_UNDECOMPOSED = str.maketrans("øØłŁđĐıħĦŧŦ", "oOlLdDihHtT")
_SHORT_NUMBER = re.compile(r"\d{1,4}")


def fold(text: str) -> str:
    """`text` with each accented letter as its base letter ("Siobhán Müller" -> "Siobhan Muller"), one character
    for one, so that a match in the folded text is at the same place in the text."""
    out = []
    for ch in text.translate(_UNDECOMPOSED):
        parts = unicodedata.normalize("NFD", ch)
        base = parts[0]
        # Only a letter plus combining marks folds; a character that decomposes otherwise stays itself.
        out.append(base if len(parts) > 1 and all(unicodedata.combining(c) for c in parts[1:]) else ch)
    return "".join(out)


_JOINERS = re.compile(r"[\s'\u2019\-]+")


def spellings(name: str) -> list[str]:
    """The ways a name is typed where the keyboard lacks its letters or a handle has no spaces: as written,
    German- or Danish-style ("Müller" -> "Mueller", "Søren" -> "Soeren"; `fold` covers "Muller"), without its
    apostrophes ("OBrien", as Moodle's file names have it), and run together ("zoemueller", "annavanderberg" in a
    web address or email)."""
    forms = [name, name.translate(_TRANSLITERATED)]
    joined = []
    for form in forms:
        words = [w for w in _JOINERS.split(form) if w]
        # Every run of two or more of its words, run together: "annavanderberg", and "vanderberg" alone.
        joined += ["".join(words[i:j]) for i in range(len(words)) for j in range(i + 2, len(words) + 1)]
    # Arabic writes "for, to" (ل) joined to a word with the article "al-" (ال) without the article's alif:
    # "الأحمد" after it is "للأحمد". The other joined letters keep it ("بالأحمد"), as `_name_before` finds them.
    merged = [_LAM + w[1:] for form in forms for w in _JOINERS.split(form) if w.startswith(_ARTICLE) and len(w) > 2]
    return list(dict.fromkeys(f for f in [*forms, *joined, *merged] if f))


_ARTICLE, _LAM = "\u0627\u0644", "\u0644"


_PLACEHOLDER_AUTHOR = re.compile(
    r"(microsoft( office| word)?|office|windows|apple|mac|macbook|google docs|libreoffice|openoffice|pages|"
    r"hp( inc\.?)?|dell|lenovo|asus|acer|toshiba|samsung|pc|home|my|the|lab|library|school|college|university)?"
    r"[\s-]*(users?|owners?|admin(istrator)?|authors?|guest|unknown|students?|default|account|pc|laptop|computer|"
    # The same words in the languages whose Windows and Office most often write them.
    r"benutzer|besitzer|studierende[r]?|utilisateur|propriétaire|étudiant|usuario|estudiante|utente|studente|"
    r"gebruiker|eigenaar|användare|bruker|käyttäjä|użytkownik)?"
    r"|tierflow|python-docx|reportlab|fpdf\d?|pypdf|word|microsoft|canvas|moodle|anonymous|none|null|n/?a",
    re.IGNORECASE,
)


def placeholder_author(name: str) -> bool:
    """A document's author that names no person: what Word, an operating system or a laptop's maker puts there
    ("Microsoft Office User", "Windows User", "Owner", "HP Inc."). Hidden as a name, its words ("Office",
    "User", "Owner") would be replaced wherever the student wrote them."""
    return _PLACEHOLDER_AUTHOR.fullmatch(" ".join(name.split())) is not None


_PREFIXED_NUMBER = re.compile(r"[A-Za-z]{1,3}(\d{6,})")


def identifier_forms(text: str) -> list[str]:
    """An identifier as given, and a student number without its letter prefix ("Z20231234" -> "20231234")."""
    bare = _PREFIXED_NUMBER.fullmatch(text.strip())
    return [text, bare.group(1)] if bare else [text]


@dataclass(frozen=True)
class Student:
    student_id: str
    name: str = ""
    aliases: tuple[str, ...] = ()
    """Other names the student's files carry (a docx author, a PDF /Author); a `placeholder_author` is not one."""
    also: tuple[str, ...] = ()
    """Other things that identify the student, hidden where they stand whole: an email address, a student number."""


@dataclass(frozen=True)
class Hidden:
    """Text with the roster hidden, and where each replacement stands in it and in the text (NFC-normalised)."""

    text: str
    source: str
    spans: list[tuple[int, int, int, int]]
    """(start, end) in `text`, then (start, end) in `source`, for each replacement, in order."""

    def source_of(self, start: int, end: int) -> str:
        """The source text behind `text[start:end]`; a replacement cut by either end is taken whole."""
        lo = hi = None
        shift = 0  # source minus text offset, after the replacements passed so far
        for hs, he, ss, se in self.spans:
            if lo is None and start < he:
                lo = ss if start > hs else start + shift
            if end <= hs:
                break
            hi = se if end < he else None
            shift = se - he
        lo = start + shift if lo is None else lo
        return self.source[lo : (end + shift if hi is None else hi)]

    def written(self) -> dict[str, str]:
        """Each label in `text`, and the longest name it replaced there (an id or email only where it replaced
        nothing else): the person as the writer named them."""

        out: dict[str, str] = {}
        for hs, he, ss, se in self.spans:
            label, source = self.text[hs:he], self.source[ss:se]
            if label not in out or _name_rank(source) > _name_rank(out[label]):
                out[label] = source
        return out


QUOTED_CONTEXT = 12
"""Characters around a label that a model's text must share with the hidden text to count as quoting it, a run of
whitespace counting one and alike to any other: fewer (" works", " learns") is a sentence about the student that
happens to share a word with the essay."""


LABEL = re.compile(r"Student-(\d+)")
"""A label as `numbered` writes it, and as `Pseudonyms.reveal` finds it in a model's text."""
NAMESAKE = re.compile(r"Namesake-(\d+)")
"""What `Pseudonyms.hide` puts for a name two or more students share, in text that is none of theirs (the brief, a
classmate's essay): one label for each group of namesakes, none of whose own labels it may give away."""
_ANY_LABEL = re.compile(f"{LABEL.pattern}|{NAMESAKE.pattern}")


def numbered(student_ids: Iterable[str], kept: Mapping[str, str] | None = None) -> dict[str, str]:
    """A label for each student id: the one `kept` gives it, else the next number after every number `kept` holds,
    in sorted-id order and as wide as `kept`'s labels were first written (`Student-007` stays three digits), so no
    label moves or goes to another student while the cohort grows or shrinks. Without `kept`, the cohort numbered
    by sorted id from `Student-01` (three digits from 100 students on)."""
    ids = sorted(set(student_ids))
    kept = kept or {}
    numbers = []
    for sid, label in kept.items():
        found = LABEL.fullmatch(label)
        if found is None:
            raise ValueError(f"{sid}: {label!r} is not a label (Student- and a number)")
        numbers.append((len(found.group(1)), int(found.group(1))))
    if len({n for _, n in numbers}) < len(numbers):
        raise ValueError(f"two students have one label: {sorted(kept.values())}")
    width = min(w for w, _ in numbers) if numbers else max(2, len(str(len(ids))))
    after = max((n for _, n in numbers), default=0)
    out = {}
    for sid in ids:
        if sid in kept:
            out[sid] = kept[sid]
        else:
            after += 1
            out[sid] = f"Student-{after:0{width}d}"
    return out


class Pseudonyms:
    """Maps each student to `Student-NN`: the label `labels` keeps for them, else numbered by sorted id after the
    kept ones (`numbered`), so the same cohort always gets the same labels, and a kept label never moves.

    `hide` replaces every roster id, full name, name part, alias and other identifier (`Student.also`) in text
    bound for a model; `reveal` maps the labels back when a note is written locally, and `restore` gives back
    the student's own words where a model quotes the hidden text.

    Every part of every name is replaced, however short ("Li", "Wu", "Ng", "Le", "Do"), case-insensitively,
    with or without its accents ("Siobhan Mueller" for "Siobhán Müller"), and in every script: on word boundaries
    where the script puts spaces between words, and as the exact substring in scripts that do not (a Chinese or
    Japanese name written without spaces), and with a German possessive "s" where it is capitalised ("Müllers
    Analyse"). Privacy wins over prose: a part that is also a common word is replaced
    wherever it stands as a word, so "Do the readings" reaches the model as "Student-03 the readings" when a
    student is called Do. Not replaced on their own: a lone initial ("J." of "J. Smith"), which names nobody and
    would replace "a" and "I"; and an id of one to four digits (a Moodle participant 2007), a platform's record
    number that would otherwise replace the years and page numbers of the text, while a student never writes it;
    and a note a roster name holds in brackets ("(Exchange)", "[TA]", "(withdrawn)"), hidden only as the roster
    writes it, brackets and all, while a name in them ("Wei (David) Zhang") is a name part (`name_parts`).

    A name, part or id two or more students share (two Anna Smiths; "Sarah" of Sarah Patel and Sarah Jones) is the
    writer's own label in text `hide` is told is theirs (`student`: their submission), and elsewhere a `NAMESAKE`
    label, one for each group of students who share names: the first by sorted id must not claim it for everyone,
    nor may a label say which of them a brief or a classmate's essay means. `reveal` gives it back as the name they
    share (the longest, as the roster writes it), so the lecturer reads a name, not a guess at one student.

    A `?` in a name is a letter a roster lost (Excel, saving it as Windows-1252, writes `?` for "ş", "ı", "ł", "ễ";
    in another code page, for "ü" or "ø" too): it stands for one letter, with any combining marks, precomposed or
    not. Every Windows code page holds ASCII, so a letter outside ASCII always fits; the name typed without its
    accents, an ASCII letter or the two a keyboard types for one ("ae", "oe", "ue", "ss", "aa": "Mueller" for
    `M?ller`), only where the letters kept make the word a name (`_lost_letters_fit`): "Yilmaz" for `Y?lmaz`,
    "Sule Yilmaz" for `?ule Y?lmaz`, "Juergen Mueller" for `J?rgen M?ller`, "Truong Thi" (capitalised) for
    `Tr??ng Th?`; not "Sule" for `?ule` alone, which would hide "rule", nor "Thi" for `Th?`, which would hide "the",
    nor "Gross" for `Gro?`. So `??` (Đỗ) hides no English word, and a lone `?` is left out, as a lone initial is.
    """

    def __init__(self, students: Iterable[Student], labels: Mapping[str, str] | None = None) -> None:
        """`labels`: the labels already given, by student id (`tierflow.vault.labels.keep_labels` keeps an
        assignment's), students no longer in `students` too, whose numbers are never given to another."""
        roster = sorted({s.student_id: s for s in students}.values(), key=lambda s: s.student_id)
        given = numbered([s.student_id for s in roster], labels)
        self.label = {s.student_id: given[s.student_id] for s in roster}
        self.students = {s.student_id: s for s in roster}
        owners: dict[str, dict[str, None]] = {}  # folded and lower-cased -> the label of each student it names
        genitives: dict[str, dict[str, None]] = {}
        written: dict[str, str] = {}  # folded and lower-cased -> as the roster first writes it
        for s in roster:
            label = self.label[s.student_id]
            ids = [] if _SHORT_NUMBER.fullmatch(s.student_id) else [s.student_id]
            aliases = [a for a in s.aliases if not placeholder_author(a)]
            names = [p for n in (*aliases, s.name) for p in name_parts(n)]
            also = [f for a in s.also for f in identifier_forms(a)]
            forms = [v for n in names for v in spellings(n)]
            # Name parts first, so that a namesake's label reads back as a name, not as a spelling of one.
            for text in (*names, *ids, *forms, *also):
                if text.strip():
                    # lower(), not casefold(): "ß" stays one character, as it is in the text matched.
                    key = fold(text.strip()).lower()
                    owners.setdefault(key, {})[label] = None
                    written.setdefault(key, text.strip())
            for g in map(_genitive, forms):
                if g:
                    genitives.setdefault(g, {})[label] = None
        # German (and a hurried English) possessive: "Müllers Analyse", "Annas Beitrag". Only as a capitalised
        # word (`hidden` checks), since "marks", "hopes" and "wills" are words where a Mark, Hope or Will studies.
        self._genitive = {g for g in genitives if g not in owners}
        for g in self._genitive:
            owners[g] = genitives[g]
        self._shared = {key: frozenset(labels) for key, labels in owners.items() if len(labels) > 1}
        """Each name, part or identifier two or more students have, and their labels: `hidden` gives it the
        writer's own label in text of theirs, elsewhere a `NAMESAKE` label."""
        namesakes: dict[tuple[str, ...], str] = {}  # the students who share names -> their namesake label
        self._namesake: dict[str, str] = {}
        """Each namesake label, and the longest name those students share, as the roster writes it (`reveal`)."""
        replacements: dict[str, str] = {}  # folded and lower-cased -> the label `hidden` gives it by default
        for key, labels in owners.items():
            if len(labels) == 1:
                replacements[key] = next(iter(labels))
                continue
            label = namesakes.setdefault(tuple(labels), f"Namesake-{len(namesakes) + 1:02d}")
            replacements[key] = label
            name = written.get(key)  # none for a genitive: their name, with an "s"
            if name and (label not in self._namesake or _name_rank(name) > _name_rank(self._namesake[label])):
                self._namesake[label] = name
        self._labels = replacements
        whole = [key for key in replacements if LOST not in key]
        self._hide = re.compile(_trie(whole, _name_char, edges=(_name_before, boundary_after))) if whole else None
        self._unmarked = {_unmarked(key): key for key in reversed(whole)}  # the roster's spelling, marks and all
        # A roster name with `?` for lost letters (Excel's Windows-1252) is found apart, on `_marked` text; where
        # one is, each broken name starting with that letter, or with `?`, is tried for the longest (`_broken_at`).
        # A genitive ("?ules") fits as its name does: its "s" is no letter kept.
        broken = {
            key: _lost_letters_fit(key[:-1] if key in self._genitive else key)
            for key in replacements
            if LOST in key and not _INITIAL.match(key)
        }
        self._broken = re.compile(_broken_pattern(broken)) if broken else None
        self._broken_fits = broken
        self._broken_rank = {key: i for i, key in enumerate(broken)}
        self._broken_from: dict[str, list[str]] = {}  # by first character, in roster order
        for key in broken:
            self._broken_from.setdefault(key[0], []).append(key)
        self._broken_body: dict[str, re.Pattern[str]] = {}  # compiled as first needed
        self._reveal = {label: sid for sid, label in self.label.items()}

    def hidden(self, text: str, *, student: str | None = None) -> Hidden:
        """`hide`, with where each replacement stands."""
        own = self.label.get(student) if student is not None else None
        source = unicodedata.normalize("NFC", text)
        if self._hide is None and self._broken is None:
            return Hidden(source, source, [])
        out: list[str] = []
        spans: list[tuple[int, int, int, int]] = []
        at = length = 0
        for start, end, key in self._found(source):
            if key in self._genitive and not source[start].isupper():
                continue
            label = own if own is not None and own in self._shared.get(key, ()) else self._labels[key]
            out.append(source[at:start])
            length += start - at
            spans.append((length, length + len(label), start, end))
            out.append(label)
            length += len(label)
            at = end
        out.append(source[at:])
        return Hidden("".join(out), source, spans)

    def _key(self, found: str) -> str:
        """The key of a name `_hide` found, written with or without the marks `_name_char` passes over."""
        return found if found in self._labels else self._unmarked.get(_unmarked(found), found)

    def _found(self, source: str) -> Iterator[tuple[int, int, str]]:
        """Each place in `source` (NFC) a name stands, in order and none overlapping, as (start, end, its key): the
        leftmost, and of those the longest; a name as the roster spells it before a broken one (`?`) as long."""
        # `_` joins words in handles and file names (`zoe_mueller@`): a boundary here, one character for one.
        folded = _lowered(fold(source).replace("_", " "))
        if self._broken is None:
            for m in self._hide.finditer(folded) if self._hide is not None else ():
                yield m.start(), m.end(), self._key(m.group())
            return
        marked = _marked(source)

        # From `at` on; a search from `at` still sees the text before it for its lookbehinds.
        def next_whole(at: int) -> tuple[int, int, str] | None:
            found = self._hide.search(folded, at) if self._hide is not None else None
            return None if found is None else (found.start(), found.end(), self._key(found.group()))

        def next_broken(at: int) -> tuple[int, int, str] | None:
            found = self._broken.search(marked, at) if self._broken is not None else None
            return None if found is None else self._broken_at(marked, folded, found.start())

        whole, broken = next_whole(0), next_broken(0)
        while whole or broken:
            first = min((f for f in (whole, broken) if f), key=lambda f: (f[0], -f[1]))  # `whole` when as long
            yield first
            if whole and whole[0] < first[1]:
                whole = next_whole(first[1])
            if broken and broken[0] < first[1]:
                broken = next_broken(first[1])

    def _broken_at(self, marked: str, folded: str, start: int) -> tuple[int, int, str]:
        """The longest broken name at `start`, where `_broken` found one, as (start, end, key); of those as long,
        the first in roster order. A `?` fits where another name's letter does, so `_broken`'s alternatives no
        longer give the longest first ("Tr??ng" before "Tr??ng Th?")."""
        likely = sorted(
            {*self._broken_from.get(LOST, []), *self._broken_from.get(folded[start], [])},
            key=self._broken_rank.__getitem__,
        )
        best: tuple[int, int, str] | None = None
        for quick in (True, False):  # `_may_stand` first; every name, should it ever leave out the one found
            for key in likely:
                if quick and not _may_stand(key, marked, start):
                    continue
                body = self._broken_body.get(key)
                if body is None:
                    # The end's lookahead inside, so that a `?` that may be one letter or two ("Strau?" for
                    # "Strauss") is tried as each until the name ends where a word does.
                    ending = _after(key[-1])
                    body = re.compile(f"(?:{_broken_body(key, self._broken_fits[key])}){ending}")
                    self._broken_body[key] = body
                found = _edge(_before(key[0])).match(marked, start) and body.match(marked, start)
                if found and (best is None or found.end() > best[1]):
                    best = (start, found.end(), key)
            if best is not None:
                return best
        raise AssertionError(f"no broken name at {marked[start : start + 40]!r}")  # `_broken` is made of these

    def hide(self, text: str, *, student: str | None = None) -> str:
        """`text` (NFC-normalised, so that a name typed with combining accents is found) with every id, name
        and name part of the roster replaced by the student's label. A name two or more students share is the
        label of `student`, where it is one of theirs (`text` is that student's own: their submission), else
        their `NAMESAKE` label, which stands for none of them in particular."""
        return self.hidden(text, student=student).text

    def reveal(self, text: str, *, by: str = "name") -> str:
        """Labels back to names (or ids, with `by="id"`) for the local note; a `NAMESAKE` label back to the name
        those students share."""

        def back(match: re.Match[str]) -> str:
            if match.group(0) in self._namesake:
                return self._namesake[match.group(0)]
            sid = self._reveal.get(match.group(0))
            if sid is None:
                return match.group(0)
            student = self.students[sid]
            return student.name if by == "name" and student.name else sid

        return _ANY_LABEL.sub(back, text)

    def restore(self, answer: str, source: Hidden) -> str | None:
        """A model's quotation of the hidden text as the student wrote it ("I Student-08 discuss" -> "I will
        discuss", for a Will Hope): None if `answer` is not in the hidden text as it stands."""
        at = source.text.find(answer) if answer else -1
        return None if at < 0 else source.source_of(at, at + len(answer))

    def restore_label(self, answer: str, source: Hidden, label: str, name: str) -> str:
        """`answer` with each `label` in it as the student wrote that place, where the text around it quotes the
        hidden text (the place sharing most of it, `QUOTED_CONTEXT` characters at least, whitespace as `_alike`
        compares it); elsewhere `name`."""
        places = [(hs, he, ss, se) for hs, he, ss, se in source.spans if source.text[hs:he] == label]

        def shared(a: int, b: int, hs: int, he: int) -> int:
            return _alike(answer, a - 1, source.text, hs - 1, -1) + _alike(answer, b, source.text, he, 1)

        def back(match: re.Match[str]) -> str:
            scored = [(shared(*match.span(), hs, he), ss, se) for hs, he, ss, se in places]
            best = max((score for score, _, _ in scored), default=0)
            found = {source.source[ss:se] for score, ss, se in scored if score == best}
            if best >= QUOTED_CONTEXT and len(found) == 1:
                return found.pop()
            # Glued to the letters before it, the label is the end of a word the model copied (Hebrew and Arabic
            # join "in", "from", "and" to the next word: "מבחן", an exam, hid a Chen): the name's part as written
            # there, not the whole name, which would garble the word ("מבחן כהן").
            start = match.start()
            if start and answer[start - 1].isalpha() and found:
                return sorted(found)[0]
            return name

        return re.sub(re.escape(label) + r"(?!\d)", back, answer) if places else answer.replace(label, name)


def _name_rank(text: str) -> tuple[bool, int]:
    """How well `text` names a person: a name before an id or email, then the longer (`Hidden.written` too)."""
    return not any(ch.isdigit() or ch == "@" for ch in text), len(text)


def _alike(x: str, i: int, y: str, j: int, step: int) -> int:
    """How many characters `x` from `i` and `y` from `j` share, going forward (`step` 1) or back (-1), a run of
    whitespace counting one and alike to any other: a model quotes text that a table or lines broke
    (`"Name\\n\\nLiam"`) on one line (`"Name Liam"`)."""
    n = 0
    while 0 <= i < len(x) and 0 <= j < len(y):
        if x[i].isspace() and y[j].isspace():
            while 0 <= i < len(x) and x[i].isspace():
                i += step
            while 0 <= j < len(y) and y[j].isspace():
                j += step
        elif x[i] == y[j]:
            i, j = i + step, j + step
        else:
            break
        n += 1
    return n


def _genitive(form: str) -> str | None:
    """A one-word name form with the possessive "s" of German ("Müller" -> "müllers"), folded and lower-cased;
    None for a name that takes none ("Hans", "Marx", "Götz") or is not one word of letters."""
    key = fold(form.strip()).lower()
    if len(key) < 3 or not key.replace(LOST, "a").isalpha() or key[-1] in "sxzß":
        return None
    return key + "s"


_JOINED_BEFORE = {"\u0600-\u06ff": "وفبلك", "\u0590-\u05ff": "ובלמשכ"}
"""By script, the letters Arabic and Hebrew write joined to the word after them: "and", "so", "with", "for", "like"
(Arabic و ف ب ل ك), "and", "in", "to", "from", "that", "as" (Hebrew ו ב ל מ ש כ)."""


_UNWRITTEN_MARKS = "\u0640\u064b-\u065f\u0670\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7"
"""Arabic's vowel marks, shadda and tatweel, Hebrew's points: written in a name or not ("محمّد", "مُحَمَّد" and
"محـمد" are "محمد"; "דָּוִד" is "דוד"), none of them a letter of it."""
_MARKED_SCRIPTS = re.compile("[\u0590-\u05ff\u0600-\u06ff]")


def _unmarked(text: str) -> str:
    """`text` without `_UNWRITTEN_MARKS`."""
    return re.sub(f"[{_UNWRITTEN_MARKS}]", "", text)


def _name_char(ch: str) -> str:
    """The regex of one character of a name (`_trie`): in Arabic or Hebrew script, with any `_UNWRITTEN_MARKS`
    after it, and such a mark of the roster's written or not."""
    if not _MARKED_SCRIPTS.match(ch):
        return re.escape(ch)
    return "" if not _unmarked(ch) else f"{re.escape(ch)}[{_UNWRITTEN_MARKS}]*"


def _name_before(first: str) -> str:
    """`boundary_before`, and for a name in Arabic or Hebrew script also after one or two of the letters that script
    joins to the next word (`_JOINED_BEFORE`): "ولمحمد" ("and for Muhammad") and "ולדוד" ("and to David") name them.
    Never right after the marks (`_UNWRITTEN_MARKS`) of a letter of its word: "אֲרוֹן" (the ark) holds no Ron; but
    after a joined letter's own marks ("וְרוֹן", "وَلِحمد"), up to two on each."""
    before = boundary_before(first)
    for block, letters in _JOINED_BEFORE.items():
        if before and re.match(f"[{block}]", first):
            marks = [f"[{_UNWRITTEN_MARKS}]{{{n}}}" for n in range(5)]
            start = before + "".join(f"(?<!\\w{m})" for m in marks[1:])
            marks = marks[:3]
            joined = [f"[{letters}]{m}" for m in marks]
            after = [f"(?<={start}{j})" for j in joined] + [f"(?<={start}{i}{j})" for i in joined for j in joined]
            # The character before is looked at first, so that most places in a word are passed over at once.
            return f"(?:{start}|(?<=[{letters}{_UNWRITTEN_MARKS}])(?:{'|'.join(after)}))"
    return before


def _trie(
    texts: Iterable[str],
    char: Callable[[str], str] = re.escape,
    lead: str = "",
    edges: tuple[Callable[[str], str], Callable[[str], str]] = (boundary_before, boundary_after),
) -> str:
    """One regex for every text, as `word_pattern` bounds each, factored by shared prefixes: an alternation of
    thousands of names (a cohort's names, parts and spellings) was tried one by one at every character of the
    text, 20 s and more for one essay of a 300-student module. At each point the longer texts are tried first,
    so a full name wins over its parts, as when the texts were ordered longest first. The texts are grouped by
    the boundaries their first and last characters want (`edges`), so each lookaround is written once per group.
    `char` is the regex of one character (`_broken_char` for a broken name's); `lead`, a lookahead every text must
    meet."""
    before, after = edges
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for text in texts:
        node = groups.setdefault((before(text[0]), after(text[-1])), {})
        for ch in text:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, dict]) -> str:
        branches = [char(ch) + pattern(child) for ch, child in node.items() if ch]
        if "" in node:
            branches.append("")  # a text ends here: tried after every longer one
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return "|".join(start + lead + pattern(trie) + end for (start, end), trie in groups.items())


def _lowered(text: str) -> str:
    """`text.lower()`, one character for one (the texts to hide are lower-cased alike), so that positions in it are
    positions in `text`: a character whose lower case is longer ("İ", which `fold` has already made "I") stays."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


LOST = "?"
"""What Excel writes in a roster for a letter the code page it saves in lacks (Windows-1252: ş, ı, ł, ễ, ă)."""

_ANY, _TITLE, _OUTSIDE_ASCII = "any letter", "any letter, every word capitalised", "a letter outside ASCII"
_OUTSIDE = "\x80-\x99"
"""In `_marked` text, a letter outside ASCII that folds to an ASCII one, a to z: C1 control characters, which no
text holds, and which keep every character class of a broken name in Latin-1, quick for `re` to compile."""
_CAPITAL = "(?![a-z])"
"""A word written capitalised (or starting with a letter outside ASCII, whose case `_marked` does not keep)."""
_MARK = "\u0300"
"""Every combining mark, in `_marked` text."""


def _outside(letter: str) -> str:
    """How `_marked` writes a letter outside ASCII that folds to `letter` (a to z)."""
    return chr(0x80 + ord(letter) - ord("a"))


def _before(first: str) -> str:
    """The lookbehind a name starting with `first` needs (`boundary_before`; `_OUTSIDE` letters are letters too).
    A `?` may stand for a letter of any script: then no letter or digit of any script (Han and Thai too, where
    every place would otherwise do) may stand before it; `_marked` text has no numeric signs."""
    if first == LOST:
        return f"(?<![\\w{_OUTSIDE}])"
    before = boundary_before(first)
    return f"{before}(?<![{_OUTSIDE}])" if before else ""


def _after(last: str) -> str:
    """The lookahead a name ending with `last` needs (as `_before`)."""
    if last == LOST:
        return f"(?![\\w{_OUTSIDE}])"
    after = boundary_after(last)
    return f"{after}(?![{_OUTSIDE}])" if after else ""


@cache
def _edge(lookaround: str) -> re.Pattern[str]:
    return re.compile(lookaround)


def _lost_letters_fit(key: str) -> str:
    """What each `?` of `key` (a broken name, folded and lower-cased) stands for besides a letter outside ASCII,
    which always fits (Excel loses no ASCII letter). Any letter, or the two a keyboard types for one
    (`_TWO_FOR_ONE`), so that the name typed without its accents is found too, where the word keeps at least four
    letters and more than twice as many as it lost ("y?lmaz", "nguy?n", "?ule y?lmaz", "m?ller" as "mueller");
    where a name of two or more words keeps four, any letter (or two) only with every word capitalised ("Truong
    Thi" for "tr??ng th?", not "trying the"); else nothing more: "?ule" is not "rule" nor "Sule", "th?" not "The"
    nor "Thi", "gro?" not "gross", "??" (Đỗ) no English word."""
    kept, lost = sum(c.isalpha() for c in key), key.count(LOST)
    if kept >= 4 and kept > 2 * lost:
        return _ANY
    return _TITLE if kept >= 4 and " " in key else _OUTSIDE_ASCII


_TWO_FOR_ONE = ("ae", "oe", "ue", "ss", "aa")
"""How a name is typed where the keyboard lacks a letter: "ä", "æ" as "ae"; "ö", "ø" as "oe"; "ü" as "ue"; "ß" as
"ss"; "å" as "aa" (`_TRANSLITERATED` spells a whole roster's names so)."""
_TWO_LETTERS = "|".join(f"[{a}{a.upper()}][{b}{b.upper()}]" for a, b in _TWO_FOR_ONE)


@cache
def _broken_char(fits: str) -> Callable[[str], str]:
    """The regex of one character of a broken name, on `_marked` text: a `?` one letter as `fits` says (`_TITLE`
    any letter, after a space a capitalised word), with its combining marks, or where it may be an ASCII letter,
    the two of `_TWO_FOR_ONE` too, tried first; a letter kept, in either case, typed with or without its accent."""
    if fits == _OUTSIDE_ASCII:  # a letter outside ASCII, or an ASCII one with marks NFC cannot join to it
        lost = rf"(?:[^\W\d_a-zA-Z]|[{_OUTSIDE}]){_MARK}*|[a-zA-Z]{_MARK}+"
    else:
        lost = rf"{_TWO_LETTERS}|(?:[^\W\d_]|[{_OUTSIDE}]){_MARK}*"

    def char(ch: str) -> str:
        if ch == LOST:
            return f"(?:{lost})"
        if "a" <= ch <= "z":
            return f"[{ch}{ch.upper()}{_outside(ch)}]"
        if ch in " -" and fits == _TITLE:
            return re.escape(ch) + _CAPITAL
        return _MARK if unicodedata.category(ch) in ("Mn", "Mc") else re.escape(ch)

    return char


def _broken_pattern(fits: dict[str, str]) -> str:
    """One regex, on `_marked` text, for where any broken name stands, each `?` as `fits` (`_lost_letters_fit`)
    says for it (`_broken_at` finds which, and the longest)."""
    keys, edges = list(fits), (_before, _after)
    tries = (
        _trie([key for key in keys if fits[key] == _ANY], _broken_char(_ANY), edges=edges),
        _trie([key for key in keys if fits[key] == _TITLE], _broken_char(_TITLE), _CAPITAL, edges),
        _trie([key for key in keys if fits[key] != _ANY], _broken_char(_OUTSIDE_ASCII), edges=edges),
    )
    return "|".join(trie for trie in tries if trie)


def _broken_body(key: str, fits: str) -> str:
    """The regex `_broken_pattern` matches one broken name by, without the lookarounds at its ends."""
    outside = "".join(map(_broken_char(_OUTSIDE_ASCII), key))
    if fits == _OUTSIDE_ASCII:
        return outside
    anywhere = "".join(map(_broken_char(fits), key))
    return anywhere if fits == _ANY else f"{_CAPITAL}{anywhere}|{outside}"


def _may_stand(key: str, marked: str, start: int) -> bool:
    """Whether broken name `key` may stand at `start` of `marked`, its letters kept there and a letter (with its
    marks), or two of `_TWO_FOR_ONE`, for each `?`: quick, to spare compiling the regex (`_broken_body`) of every
    name that cannot."""
    places = {start}  # where the rest of `key` may start: a `?` taken as one letter or as two
    for ch in key:
        after = set()
        for at in places:
            if at >= len(marked):
                continue
            got = marked[at]
            if ch == LOST:
                if not ((got.isalnum() and not got.isdecimal()) or "\x80" <= got <= "\x99"):  # as `[^\W\d_]`
                    continue
                if marked[at : at + 2].lower() in _TWO_FOR_ONE:
                    after.add(at + 2)
                at += 1
                while at < len(marked) and marked[at] == _MARK:
                    at += 1
                after.add(at)
            elif got == ch or got.lower() == ch or got == (_outside(ch) if "a" <= ch <= "z" else _MARK):
                after.add(at + 1)
        if not after:
            return False
        places = after
    return True


def _marked(source: str) -> str:
    """`source` folded as `hidden` matches it, one character for one, but with the case of its ASCII letters kept
    and each letter outside ASCII that folds to one inside written `_outside` ("Şule" -> "\\x92ule"): what a broken
    name's `?` fits depends on both. Every combining mark is `_MARK`, and a numeric sign a space (it ends a word,
    "Yılmaz²", as `boundary_after` has it), so that a `?` is a small regex."""
    out = []
    for ch, folded in zip(source, fold(source).replace("_", " "), strict=True):
        kind = unicodedata.category(folded)
        if folded.isascii() and folded.isalpha():
            out.append(folded if ch.isascii() else _outside(folded.lower()))
        elif kind in ("Mn", "Mc"):
            out.append(_MARK)
        elif kind in ("No", "Me"):
            out.append(" ")
        else:
            low = folded.lower()
            out.append(low if len(low) == 1 else folded)
    return "".join(out)


class NoPseudonyms(Pseudonyms):
    """Pseudonymisation switched off (a local-only tier, or the lecturer's explicit choice)."""

    def __init__(self) -> None:
        super().__init__([])

    def hide(self, text: str, *, student: str | None = None) -> str:
        return text
