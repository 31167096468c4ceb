"""How long `tierflow import submissions` takes on a large Moodle export, and how much memory it needs.

Builds Moodle "Download all submissions" zips (folders layout) of real documents made with the same maintained
libraries the tests use (.docx with python-docx, .pdf with fpdf2, .odt with odfpy, online-text HTML; every seventh
student also hands in an appendix), then imports each into a fresh vault in a child process of its own and reports
wall and CPU time, then, in a second import of the same export under tracemalloc, the peak of Python's
allocations, and the child's peak resident memory (getrusage). Wall time includes loading the document libraries,
as a real `tierflow import submissions` does. The baseline, a small export, runs in the same invocation on the
same machine, so the two are comparable:

    python benchmarks/lms_import.py [--students 200] [--baseline 20] [--format table|json]

The target is under 60 s for 200 students. Building the exports is not timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
TARGET_S = 60.0


def build_export(path: Path, n: int) -> Path:
    """A Moodle export of `n` students with a mix of formats (see the module docstring)."""
    sys.path.insert(0, str(REPO / "tests"))
    from lms_exports import Student, docx_bytes, essay, moodle_zip, odt_bytes, onlinetext, pdf_bytes

    students = []
    for i in range(n):
        paragraphs = essay(1 + i % 14)
        name = f"Student{i:03d} Example-Name"
        s = Student(str(100000 + i), name)
        if i % 3 == 2:
            s.online = onlinetext("".join(f"<p>{p}</p>" for p in paragraphs))
        elif i % 4 == 1:
            s.files["essay.pdf"] = pdf_bytes(paragraphs, author=name)
        elif i % 5 == 4:
            s.files["essay.odt"] = odt_bytes(paragraphs, author=name)
        else:
            s.files["essay.docx"] = docx_bytes(paragraphs, author=name)
        if i % 7 == 6:
            s.files["appendix.docx"] = docx_bytes(["Appendix: the interview schedule.", "Question one."])
        students.append(s)
    return moodle_zip(path, students)


def fresh_vault(root: Path) -> Path:
    vault = root / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT).mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    return vault


def child(export: str, vault: str, traced_vault: str) -> None:
    """Import `export` into `vault` (timed: wall and CPU), then again into `traced_vault` under tracemalloc (peak
    Python allocations); print one JSON line, with the process's peak resident memory."""
    import resource
    import tracemalloc

    from tierflow.lms.importer import import_submissions

    started, cpu = time.perf_counter(), time.process_time()
    report = import_submissions(Path(vault), ASSIGNMENT, Path(export))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    tracemalloc.start()
    import_submissions(Path(traced_vault), ASSIGNMENT, Path(export))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "students": len(report.students),
        "unreadable": len(report.unreadable), "tracemalloc_peak_mib": round(peak / 2**20, 1),
        "max_rss_mib": round(rss_kib / 1024, 1),
    }))  # fmt: skip


def measure(n: int, work: Path) -> dict[str, object]:
    export = build_export(work / f"EDU7001-Essay 2-{n}.zip", n)
    vault, traced = fresh_vault(work / f"v{n}"), fresh_vault(work / f"t{n}")
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(export), str(vault), str(traced)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["export_mib"] = round(export.stat().st_size / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--baseline", type=int, default=20)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="tierflow-bench-lms-") as tmp:
        rows = {size: measure(size, Path(tmp)) for size in (args.baseline, args.students)}
    if args.format == "json":
        print(json.dumps({str(k): v for k, v in rows.items()}, indent=2))
        return
    head = ("students", "wall s", "CPU s", "wall s/student", "tracemalloc peak MiB", "max RSS MiB", "zip MiB")
    print("  ".join(head))
    for r in rows.values():
        per = float(r["seconds"]) / max(1, int(r["students"]))
        cells = (r["students"], r["seconds"], r["cpu_seconds"], f"{per:.3f}", r["tracemalloc_peak_mib"],
                 r["max_rss_mib"], r["export_mib"])  # fmt: skip
        print("  ".join(f"{c!s:>{len(h)}}" for c, h in zip(cells, head, strict=True)))
    big = rows[args.students]
    verdict = "under" if float(big["seconds"]) < TARGET_S else "OVER"
    print(f"{args.students} students in {big['seconds']} s: {verdict} the {TARGET_S:g} s target")


if __name__ == "__main__":
    main()
