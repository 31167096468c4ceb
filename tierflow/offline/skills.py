"""The offline model's skills: how it answers each structured request, keyed by the output schema's name.

Each skill reads the JSON in the prompt's <data> fence and answers deterministically and extractively, from
the user's own text. `SKILLS` at the end is the whole registry; `register_skill` adds one for a flow of
your own.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from tierflow.vault.rubric import ScoreRange

Skill = Callable[[dict[str, Any]], dict[str, Any]]

MAX_CLAIMS = 8
MAX_QUOTES = 6
"""As many claims and quotes as the collate and draft prompts ask for (`MAX_CLAIMS`, `MAX_QUOTES` in those tasks)."""

_STOP = set(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "as",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "their",
        "from",
        "at",
        "not",
        "but",
        "can",
        "may",
        "more",
        "most",
        "such",
        "than",
        "which",
        "who",
        "what",
        "how",
        "into",
        "about",
        "also",
        "between",
        "through",
        "they",
        "we",
        "our",
        "one",
        "two",
        "has",
        "have",
        "had",
        "do",
        "does",
        "students",
        "student",
        "learning",
        "feedback",
        "p",
        "pp",
    ]
)

_WORDS = re.compile(r"[^\W\d_](?:[^\W\d_]|-){3,}")
"""Words of four letters or more, in any script."""

_SIGNALS = {
    "argument": r"\b(however|argue|therefore|whereas|although|suggests|because)\b",
    "literature": r"\(\w[^)]*\d{4}\)|\b\w+ (?:and|&) \w+ \(?\d{4}",
    "structure": r"\b(this essay|in conclusion|firstly|finally|in summary)\b",
    "referenc": r"\(\d{4}\)|\bet al\b|\bpp?\. \d+",
}


def offline_collation(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: claims are the first sentence of each quote, then of each of the reader's notes and callouts (citing
    no quote); keywords are linked concepts, then frequent words."""
    quotes = data.get("quotes", [])
    claims = [{"claim": _first_sentence(q["text"]), "quote_ids": [q["id"]]} for q in quotes[:MAX_CLAIMS]]
    for note in data.get("reader_notes", [])[: MAX_CLAIMS - len(claims)]:
        if first := _first_sentence(_WIKILINK_TEXT.sub(lambda m: m.group(2), note)):
            claims.append({"claim": first, "quote_ids": []})
    texts = [q["text"] for q in quotes] + list(data.get("reader_notes", []))
    words = Counter(w for text in texts for w in _WORDS.findall(text.lower()) if w not in _STOP)
    linked = [c.split("/")[-1].split("|")[0].split("#")[0].lower() for c in data.get("linked_concepts", [])]
    keywords = list(dict.fromkeys([*linked, *(w for w, _ in words.most_common(6))]))[:6]
    summary = " ".join(c["claim"] for c in claims[:2]) or "No quotations or notes were found."
    return {"summary": summary, "claims": claims, "keywords": keywords}


def _first_sentence(text: str) -> str:
    """The first sentence of `text`, ending in a full stop (empty for empty text)."""
    first = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))[0].rstrip(" ;,")
    return "" if not first else first if first.endswith((".", "!", "?")) else f"{first}."


def offline_synthesis(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: a concept for each keyword that two or more sources share, most shared first."""
    by_keyword: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in data.get("collations", []):
        for k in c.get("keywords", []):
            by_keyword[k].append(c)
    shared = sorted(((k, cs) for k, cs in by_keyword.items() if len(cs) >= 2), key=lambda kv: (-len(kv[1]), kv[0]))
    existing = {
        name.casefold(): note
        for note in data.get("existing_notes", [])
        for name in (note.get("name", ""), *note.get("aliases", []))
    }
    concepts = []
    for keyword, cs in shared[:6]:
        note = existing.get(keyword.casefold())
        if note is not None:  # an addition: only the sources the existing note does not cite
            cs = [c for c in cs if c["citekey"] not in note.get("cites", [])]
            if not cs:
                continue
        refs = [{"citekey": c["citekey"], "quote_id": c["quotes"][0]["id"]} for c in cs if c.get("quotes")]
        concepts.append(
            {
                "name": note["name"] if note else keyword[:1].upper() + keyword[1:],
                "summary": f"{len(cs)} of this week's sources bear on {keyword}: "
                + ", ".join(c["citekey"] for c in cs)
                + ".",
                "sources": [c["citekey"] for c in cs],
                "quote_refs": refs,
                "tensions": [],
                "extends": note["name"] if note else None,
            }
        )
    patterns = [f"{k} recurs in {len(cs)} sources" for k, cs in shared[:5]]
    return {"patterns": patterns, "tensions": [], "concepts": concepts}


def offline_merged_synthesis(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: groups' concepts of the same name become one, with all their sources; the most sourced first."""
    merged: dict[str, dict[str, Any]] = {}
    for group in data.get("groups", []):
        for c in group.get("concepts", []):
            into = merged.setdefault(c["name"].casefold(), {**c, "sources": [], "quote_refs": [], "tensions": []})
            into["extends"] = into.get("extends") or c.get("extends")
            for key in ("sources", "quote_refs", "tensions"):
                into[key] += [x for x in c.get(key, []) if x not in into[key]]
    concepts = sorted(merged.values(), key=lambda c: (-len(c["sources"]), c["name"].casefold()))[:6]
    for c in concepts:
        c["summary"] = (
            f"{len(c['sources'])} of this week's sources bear on {c['name'].lower()}: " + ", ".join(c["sources"]) + "."
        )
    groups = data.get("groups", [])
    return {
        "patterns": list(dict.fromkeys(p for g in groups for p in g.get("patterns", []))),
        "tensions": list(dict.fromkeys(t for g in groups for t in g.get("tensions", []))),
        "concepts": concepts,
    }


def offline_draft(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: the summary is the concept's; the discussion strings the sources' claims; quotes are verbatim."""
    concept = data.get("concept", {})
    sources = data.get("sources", [])
    paragraphs = []
    for s in sources:
        # The source's claims, else its summary: a discussion is never left empty while a source has text.
        said = " ".join(s.get("claims", [])[:2]) or s.get("summary", "")
        if said:
            paragraphs.append(f"{s['title']} ({s['citekey']}): {said}")
    quotes = [{"source": s["citekey"], "text": s["quotes"][0]} for s in sources if s.get("quotes")]
    return {
        "summary": concept.get("summary", ""),
        "discussion": "\n\n".join(paragraphs) or concept.get("summary", "") or concept.get("name", ""),
        "quotes": quotes[:MAX_QUOTES],
        "open_questions": [f"How do these sources define {concept.get('name', 'this concept').lower()}?"],
    }


def _rubric_criteria(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt's criteria as dicts with their levels (best first) and ranges; plain names are accepted too."""
    levels = data.get("levels") or ["Good", "Satisfactory", "Weak"]
    criteria = data.get("criteria") or [
        "Argument and critical evaluation",
        "Use of literature",
        "Structure and clarity",
        "Referencing and academic conventions",
    ]
    out = []
    for c in criteria:
        if isinstance(c, str):
            c = {"criterion": c, "levels": [{"level": lvl} for lvl in levels]}
        ranked = c.get("levels") or []
        if ranked and all(lvl.get("low") is not None or lvl.get("high") is not None for lvl in ranked):
            # Best first, whichever way round the rubric lists them.
            ranked = sorted(ranked, key=lambda lvl: -(lvl["low"] if lvl.get("low") is not None else -1))
        out.append({**c, "levels": ranked})
    return out


def _score(level: dict[str, Any]) -> float | None:
    """A score inside a level's range (`ScoreRange.typical`), or None when the rubric gives no range."""
    if level.get("low") is None and level.get("high") is None:
        return None
    return ScoreRange(level.get("low"), level.get("high"), bool(level.get("below"))).typical()


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.split()) > 3]


def _hits(criterion: str, sentences: list[str]) -> list[str]:
    cue = next((v for k, v in _SIGNALS.items() if k in criterion.lower()), r"\b\w{9,}\b")
    return [s for s in sentences if re.search(cue, s, re.IGNORECASE)]


def offline_evidence(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: sentences matching each criterion's cue words; the level from how many there are, the score
    from the middle of that level's range."""
    sentences = _sentences(data.get("submission", ""))
    out = []
    for c in _rubric_criteria(data):
        hits = _hits(c["criterion"], sentences)
        levels = c["levels"]
        level = levels[min(len(levels) - 1, max(0, 3 - len(hits)))] if levels else {}
        out.append(
            {
                "criterion": c["criterion"],
                "quotes": hits[:2],
                "level": level.get("level", ""),
                "score": _score(level),
                "note": f"{len(hits)} passages bear on this.",
            }
        )
    return {"criteria": out}


def offline_cohort(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: criteria whose students sit highest on the rubric's levels are strengths; the lowest, weaknesses."""
    order = data.get("levels") or []
    rank: dict[str, list[int]] = defaultdict(list)
    levels: dict[str, Counter[str]] = defaultdict(Counter)
    for sub in data.get("submissions", []):
        for c in sub.get("criteria", []):
            levels[c["criterion"]][c["level"]] += 1
            rank[c["criterion"]].append(order.index(c["level"]) if c["level"] in order else len(order))
    mean = {k: sum(rank[k]) / max(1, len(rank[k])) for k in levels}
    ranked = sorted(levels, key=lambda k: mean[k])
    strong = ranked[: min(2, (len(ranked) + 1) // 2)]
    # The lowest-placed criteria, worst first, that are neither a strength nor all at the rubric's top level.
    weak = [k for k in reversed(ranked) if k not in strong and mean[k] > 0][:2]

    def spread(k: str) -> str:
        """`9 at Good, 2 at Satisfactory`: the criterion's students per level, in the rubric's order."""
        place = {name: i for i, name in enumerate(order)}
        return ", ".join(f"{n} at {lvl}" for lvl, n in sorted(levels[k].items(), key=lambda x: place.get(x[0], 99)))

    strengths = [f"{k}: most often at {levels[k].most_common(1)[0][0]}." for k in strong]
    standing = ("the weakest criterion across the cohort", "the second weakest criterion")
    misconceptions = [f"{k}: {standing[i]} ({spread(k)})." for i, k in enumerate(weak)]
    actions = [f"Model what a strong answer looks like for '{k}' with an annotated exemplar." for k in weak]
    return {"strengths": strengths, "misconceptions": misconceptions, "teaching_actions": actions}


def offline_feedback(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: each criterion's comment restates the evidence and the submission's own sentences on it, up to
    the criterion's word budget (so criteria worth more get more); next steps target the weakest."""
    evidence = {e["criterion"]: e for e in data.get("evidence", [])}
    sentences = _sentences(data.get("submission", ""))
    criteria = []
    for c in _rubric_criteria(data):
        name = c["criterion"]
        e = (
            evidence.get(name)
            or offline_evidence({"submission": data.get("submission", ""), "criteria": [c]})["criteria"][0]
        )
        level = next((lvl for lvl in c["levels"] if lvl.get("level") == e.get("level")), None) or (
            c["levels"][-1] if c["levels"] else {}
        )
        score = e.get("score") if e.get("score") is not None else _score(level)
        hits = _hits(name, sentences)
        quotes = hits[:1]
        where = (
            f" (a score of {score:g} in its range {level['range']})" if level.get("range") and score is not None else ""
        )
        parts = [
            f"Your work sits at about '{level.get('level', 'unclear')}'{where} on this criterion.",
            "For example, you wrote the passage quoted below." if quotes else "I found little direct evidence for it.",
        ]
        budget = int(c.get("words") or 40)
        for sentence in hits[1:]:
            if len(" ".join(parts).split()) + len(sentence.split()) + 4 > budget:
                break
            parts.append(f"You also wrote: {sentence}")
        criteria.append(
            {
                "criterion": name,
                "level": level.get("level", ""),
                "score": score,
                "comment": " ".join(parts),
                "quotes": quotes,
            }
        )
    # Next steps target the criteria placed lowest (levels are best first), never one already at the top level.
    place = {
        c["criterion"]: next((i for i, lvl in enumerate(r["levels"]) if lvl.get("level") == c["level"]), 0)
        for c, r in zip(criteria, _rubric_criteria(data), strict=True)
    }
    weakest = sorted((c for c in criteria if place[c["criterion"]] > 0), key=lambda c: -place[c["criterion"]])[:2]
    steps = [
        f"Next time, work on '{c['criterion']}': compare your draft with the rubric's descriptor first."
        for c in weakest
    ] or ["Every criterion sits at the rubric's top level: keep to the approach this draft takes."]
    return {
        "criteria": criteria,
        "next_steps": steps,
        "overall": "This draft was assembled from your own sentences by an offline model, for your lecturer to review.",
    }


_LEVEL_WORDS = re.compile(
    r"\b(excellent|outstanding|exemplary|very good|good|proficient|competent|satisfactory|adequate|developing|"
    r"emerging|beginning|weak|poor|limited|fail|pass|merit|distinction)\b",
    re.IGNORECASE,
)


def offline_rubric(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: each short `Name: text` line is a criterion; levels are the level words the rubric uses.

    A rubric that names no levels gets two plainly generic ones, `Meets the criterion` and `Not yet`, and the
    notes say so: the lecturer checks every normalised rubric before a run may use it.
    """
    text = data.get("rubric", "")
    criteria = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*+>#]+|\d+[.)])\s*", "", line).replace("**", "").strip()
        head, sep, rest = line.partition(":")
        if sep and head and len(head.split()) <= 6 and not _LEVEL_WORDS.fullmatch(head.strip()):
            criteria.append({"name": head.strip(), "description": rest.strip()})
    named = list(dict.fromkeys(m.group(1).capitalize() for m in _LEVEL_WORDS.finditer(text)))
    generic = len(named) < 2
    for c in criteria:
        c["levels"] = (
            [
                {"name": "Meets the criterion", "descriptor": c["description"]},
                {"name": "Not yet", "descriptor": f"Does not yet show: {c['description'].rstrip('.')}."},
            ]
            if generic
            else [{"name": n} for n in named]
        )
    notes = "The offline model found no level names in the rubric and proposed two generic ones." if generic else ""
    return {"title": "", "criteria": criteria, "notes": notes}


def offline_judge(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: the answer that uses more of the request's own words is better; equal counts are a tie.

    The rule looks at each answer on its own, so the order they are shown in cannot change the verdict.
    """
    request = data.get("request") or {}
    asked = _content_words(f"{request.get('system', '')} {request.get('prompt', '')}")
    a = len(asked & _content_words(str(data.get("answer_a", ""))))
    b = len(asked & _content_words(str(data.get("answer_b", ""))))
    better = "A" if a > b else "B" if b > a else "tie"
    return {"better": better, "reason": f"[offline judge] answer A uses {a} of the request's words, answer B {b}."}


def _content_words(text: str) -> set[str]:
    return {w for w in _WORDS.findall(text.lower()) if w not in _STOP}


_REVIEW_CUES = {
    "suggestions": re.compile(
        r"\b(should|suggest\w*|would like|next time|recommend\w*|model what|add a|would suit|more time)\b", re.I
    ),
    "misconceptions": re.compile(
        r"\b(misconceptions?|confus\w*|struggl\w*|misread|weak\w*|difficult\w*|without evaluating)\b", re.I
    ),
    "worked": re.compile(
        r"\b(worked|effective(?:ly)?|helpful|valued|enjoyed|useful|strengths?|did well|most often at)\b", re.I
    ),
}
"""Cue words per finding, in the order they are tried: a sentence that suggests a change is a suggestion,
even when it says what worked."""
_WIKILINK_TEXT = re.compile(r"!?\[\[([^\]|]*\|)?([^\]]*)\]\]")


def _review_sentences(text: str) -> list[str]:
    """A note's sentences and list items, with wikilinks as their plain labels and Markdown marks dropped."""
    text = _WIKILINK_TEXT.sub(lambda m: m.group(2), text)
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # a heading names a section; it is not a finding
        line = re.sub(r"^\s*(?:[-*+>]|\d+[.)])\s*", "", line).replace("**", "").strip()
        if line and not line.startswith(("|", "[!")):
            out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if len(s.split()) > 3]
    return out


def offline_unit_findings(data: dict[str, Any]) -> dict[str, Any]:
    """Offline (module review, collate): each sentence of a note with a cue word for what worked, a
    misconception or a suggested change becomes a claim citing that note."""
    found: dict[str, list[dict[str, Any]]] = {k: [] for k in _REVIEW_CUES}
    for note in data.get("notes", []):
        for sentence in _review_sentences(note.get("text", "")):
            kind = next((k for k, cue in _REVIEW_CUES.items() if cue.search(sentence)), None)
            if kind and len(found[kind]) < MAX_CLAIMS:
                found[kind].append({"claim": sentence, "evidence": [note["link"]]})
    kinds = Counter(n.get("kind", "note") for n in data.get("notes", []))
    summary = f"{data.get('part', 'This part')}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + "."
    return {
        "summary": summary,
        "worked": found["worked"],
        "misconceptions": found["misconceptions"],
        "suggestions": found["suggestions"],
    }


def _merge_claims(claims: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Claims that share their content words merge (evidence united); the most cited first, then in order."""
    merged: list[dict[str, Any]] = []
    for c in claims:
        words = _content_words(c.get("claim", ""))
        same = next((m for m in merged if words and len(words & m["words"]) >= max(3, len(words) // 2)), None)
        if same is None:
            merged.append({"claim": c.get("claim", ""), "evidence": list(c.get("evidence", [])), "words": words})
        else:
            same["evidence"] = list(dict.fromkeys([*same["evidence"], *c.get("evidence", [])]))
    ranked = sorted(enumerate(merged), key=lambda im: (-len(im[1]["evidence"]), im[0]))
    return [{"claim": m["claim"], "evidence": m["evidence"]} for _, m in ranked[:limit]]


def offline_semester_findings(data: dict[str, Any]) -> dict[str, Any]:
    """Offline (module review, synthesise): every part's claims, merged where they say the same thing, the
    claims with the most evidence first."""
    parts = data.get("parts", [])
    out = {k: _merge_claims([c for p in parts for c in p.get(k, [])], MAX_CLAIMS) for k in _REVIEW_CUES}
    recurring = sum(len(c["evidence"]) > 1 for k in out for c in out[k])
    summary = f"{len(parts)} parts of the semester; {recurring} findings rest on more than one note."
    return {"summary": summary, **out}


_CHANGE_TO = {
    "readings": re.compile(r"\b(read\w*|texts?|articles?|chapters?)\b", re.I),
    "assessment": re.compile(r"\b(assess\w*|essays?|rubrics?|marking|deadlines?|portfolio|exemplar|grad\w*)\b", re.I),
}


def offline_module_proposal(data: dict[str, Any]) -> dict[str, Any]:
    """Offline (module review, draft): what worked and the misconceptions as found; each suggested change
    goes to readings, assessment or teaching activities by its words."""
    findings = data.get("findings", {})
    out: dict[str, list[dict[str, Any]]] = {"readings": [], "assessment": [], "teaching_activities": []}
    for c in findings.get("suggestions", []):
        where = next((k for k, cue in _CHANGE_TO.items() if cue.search(c.get("claim", ""))), "teaching_activities")
        out[where].append(c)
    title = (data.get("descriptor") or {}).get("title", "the module")
    summary = (
        f"A revision proposal for {title}, assembled from the semester's own notes: "
        f"{len(findings.get('worked', []))} things that worked, {len(findings.get('misconceptions', []))} "
        f"recurring misconceptions and {len(findings.get('suggestions', []))} suggested changes."
    )
    return {
        "summary": summary,
        "what_worked": findings.get("worked", []),
        "misconceptions": findings.get("misconceptions", []),
        **out,
    }


SKILLS: dict[str, Skill] = {
    "collationout": offline_collation,
    "synthesisout": offline_synthesis,
    "mergedsynthesisout": offline_merged_synthesis,
    "draftout": offline_draft,
    "evidenceout": offline_evidence,
    "cohortout": offline_cohort,
    "feedbackout": offline_feedback,
    "rubricout": offline_rubric,
    "judgeout": offline_judge,
    "unitfindings": offline_unit_findings,
    "semesterfindings": offline_semester_findings,
    "moduleproposal": offline_module_proposal,
}
"""Skill per schema name (the output model's class name, lower-cased)."""


def register_skill(schema_name: str, skill: Skill) -> None:
    """Teach the offline model to answer requests for `schema_name` (for flows of your own)."""
    SKILLS[schema_name] = skill
