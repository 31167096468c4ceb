"""Stable pseudonyms for students, so identities never leave the machine in a prompt."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tierflow.vault.annotations import boundary_after, boundary_before

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


_TRANSLITERATED = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})
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
    German-style ("Müller" -> "Mueller"; `fold` covers "Muller"), without its apostrophes ("OBrien", as Moodle's
    file names have it), and run together ("zoemueller", "annavanderberg" in a web address or email)."""
    forms = [name, name.translate(_TRANSLITERATED)]
    joined = []
    for form in forms:
        words = [w for w in _JOINERS.split(form) if w]
        # Every run of two or more of its words, run together: "annavanderberg", and "vanderberg" alone.
        joined += ["".join(words[i:j]) for i in range(len(words)) for j in range(i + 2, len(words) + 1)]
    return list(dict.fromkeys(f for f in [*forms, *joined] if f))


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

        def rank(source: str) -> tuple[bool, int]:
            return not any(ch.isdigit() or ch == "@" for ch in source), len(source)

        out: dict[str, str] = {}
        for hs, he, ss, se in self.spans:
            label, source = self.text[hs:he], self.source[ss:se]
            if label not in out or rank(source) > rank(out[label]):
                out[label] = source
        return out


QUOTED_CONTEXT = 12
"""Characters around a label that a model's text must share with the hidden text to count as quoting it: fewer
(" works", " learns") is a sentence about the student that happens to share a word with the essay."""


LABEL = re.compile(r"Student-(\d+)")
"""A label as `numbered` writes it, and as `Pseudonyms.reveal` finds it in a model's text."""


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
    number that would otherwise replace the years and page numbers of the text, while a student never writes it.
    """

    def __init__(self, students: Iterable[Student], labels: Mapping[str, str] | None = None) -> None:
        """`labels`: the labels already given, by student id (`tierflow.vault.labels.keep_labels` keeps an
        assignment's), students no longer in `students` too, whose numbers are never given to another."""
        roster = sorted({s.student_id: s for s in students}.values(), key=lambda s: s.student_id)
        given = numbered([s.student_id for s in roster], labels)
        self.label = {s.student_id: given[s.student_id] for s in roster}
        self.students = {s.student_id: s for s in roster}
        replacements: dict[str, str] = {}  # folded and lower-cased -> label
        genitives: dict[str, str] = {}
        for s in roster:
            ids = [] if _SHORT_NUMBER.fullmatch(s.student_id) else [s.student_id]
            # Aliases first: the roster's parts ("Okafor") would otherwise take the first claim on an alias's.
            aliases = [a for a in s.aliases if not placeholder_author(a)]
            names = [p for n in (*aliases, s.name) for p in name_parts(n)]
            also = [f for a in s.also for f in identifier_forms(a)]
            forms = [v for n in names for v in spellings(n)]
            for text in (*ids, *forms, *also):
                if text.strip():
                    # lower(), not casefold(): "ß" stays one character, as it is in the text matched.
                    replacements.setdefault(fold(text.strip()).lower(), self.label[s.student_id])
            genitives.update((g, self.label[s.student_id]) for g in map(_genitive, forms) if g)
        # German (and a hurried English) possessive: "Müllers Analyse", "Annas Beitrag". Only as a capitalised
        # word (`hidden` checks), since "marks", "hopes" and "wills" are words where a Mark, Hope or Will studies.
        self._genitive = {g for g in genitives if g not in replacements}
        for g in self._genitive:
            replacements[g] = genitives[g]
        self._labels = replacements
        self._hide = re.compile(_trie(replacements)) if replacements else None
        self._reveal = {label: sid for sid, label in self.label.items()}

    def hidden(self, text: str) -> Hidden:
        """`hide`, with where each replacement stands."""
        source = unicodedata.normalize("NFC", text)
        if self._hide is None:
            return Hidden(source, source, [])
        out: list[str] = []
        spans: list[tuple[int, int, int, int]] = []
        at = length = 0
        # `_` joins words in handles and file names (`zoe_mueller@`): a boundary here, one character for one.
        for m in self._hide.finditer(_lowered(fold(source).replace("_", " "))):
            if m.group() in self._genitive and not source[m.start()].isupper():
                continue
            label = self._labels[m.group()]
            out.append(source[at : m.start()])
            length += m.start() - at
            spans.append((length, length + len(label), m.start(), m.end()))
            out.append(label)
            length += len(label)
            at = m.end()
        out.append(source[at:])
        return Hidden("".join(out), source, spans)

    def hide(self, text: str) -> str:
        """`text` (NFC-normalised, so that a name typed with combining accents is found) with every id, name
        and name part of the roster replaced by the student's label."""
        return self.hidden(text).text

    def reveal(self, text: str, *, by: str = "name") -> str:
        """Labels back to names (or ids, with `by="id"`) for the local note."""

        def back(match: re.Match[str]) -> str:
            sid = self._reveal.get(match.group(0))
            if sid is None:
                return match.group(0)
            student = self.students[sid]
            return student.name if by == "name" and student.name else sid

        return LABEL.sub(back, text)

    def restore(self, answer: str, source: Hidden) -> str | None:
        """A model's quotation of the hidden text as the student wrote it ("I Student-08 discuss" -> "I will
        discuss", for a Will Hope): None if `answer` is not in the hidden text as it stands."""
        at = source.text.find(answer) if answer else -1
        return None if at < 0 else source.source_of(at, at + len(answer))

    def restore_label(self, answer: str, source: Hidden, label: str, name: str) -> str:
        """`answer` with each `label` in it as the student wrote that place, where the text around it quotes the
        hidden text (the place sharing most of it, `QUOTED_CONTEXT` characters at least); elsewhere `name`."""
        places = [(hs, he, ss, se) for hs, he, ss, se in source.spans if source.text[hs:he] == label]

        def shared(a: int, b: int, hs: int, he: int) -> int:
            n = 0
            while n < a and n < hs and answer[a - n - 1] == source.text[hs - n - 1]:
                n += 1
            m = 0
            while b + m < len(answer) and he + m < len(source.text) and answer[b + m] == source.text[he + m]:
                m += 1
            return n + m

        def back(match: re.Match[str]) -> str:
            scored = [(shared(*match.span(), hs, he), ss, se) for hs, he, ss, se in places]
            best = max((score for score, _, _ in scored), default=0)
            found = {source.source[ss:se] for score, ss, se in scored if score == best}
            return found.pop() if best >= QUOTED_CONTEXT and len(found) == 1 else name

        return re.sub(re.escape(label) + r"(?!\d)", back, answer) if places else answer.replace(label, name)


def _genitive(form: str) -> str | None:
    """A one-word name form with the possessive "s" of German ("Müller" -> "müllers"), folded and lower-cased;
    None for a name that takes none ("Hans", "Marx", "Götz") or is not one word of letters."""
    key = fold(form.strip()).lower()
    if len(key) < 3 or not key.isalpha() or key[-1] in "sxzß":
        return None
    return key + "s"


def _trie(texts: Iterable[str]) -> str:
    """One regex for every text, as `word_pattern` bounds each, factored by shared prefixes: an alternation of
    thousands of names (a cohort's names, parts and spellings) was tried one by one at every character of the
    text, 20 s and more for one essay of a 300-student module. At each point the longer texts are tried first,
    so a full name wins over its parts, as when the texts were ordered longest first. The texts are grouped by
    the boundaries their first and last characters want, so each lookaround is written once per group."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for text in texts:
        node = groups.setdefault((boundary_before(text[0]), boundary_after(text[-1])), {})
        for ch in text:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + pattern(child) for ch, child in node.items() if ch]
        if "" in node:
            branches.append("")  # a text ends here: tried after every longer one
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return "|".join(before + pattern(trie) + after for (before, after), trie in groups.items())


def _lowered(text: str) -> str:
    """`text.lower()`, one character for one (the texts to hide are lower-cased alike), so that positions in it are
    positions in `text`: a character whose lower case is longer ("İ", which `fold` has already made "I") stays."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class NoPseudonyms(Pseudonyms):
    """Pseudonymisation switched off (a local-only tier, or the lecturer's explicit choice)."""

    def __init__(self) -> None:
        super().__init__([])

    def hide(self, text: str) -> str:
        return text
