"""The repository stands alone: nothing in it points outside it, and its citations resolve.

Pure file reading (no JAX, no models), so it runs in well under a second:

* no tracked file names the team's old out-of-tree notes file (the singular name, built below so this
  file does not match itself), a path into the sibling `shared` directory, or an absolute path under
  the machine's work root;
* REFERENCES.md exists, its numbered headings are unique and each carries a stable `<a id="sN-M">`
  anchor;
* every `REFERENCES.md §N` / `§N.M` citation anywhere in the repository, and every `§N` cross-reference
  inside REFERENCES.md, names a section heading that exists, and no citation uses the old style (a bare
  number or "section N" after the file name).
"""

from __future__ import annotations

import functools
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "REFERENCES.md"

# Built from pieces so that this file does not contain the strings it forbids.
FORBIDDEN = {
    "the out-of-tree notes file": re.compile(re.escape("REFERENCE" + ".md"), re.IGNORECASE),
    "a path into the sibling shared directory": re.compile(re.escape(".." + "/shared")),
    "the out-of-tree environment, style and design notes": re.compile(
        r"\b(?:" + "ENVIRONMENT|STYLE|DESIGN" + r")\.md\b"
    ),
    "an absolute path under the work root": re.compile(r"(?<![\w.:/-])" + re.escape("/" + "work" + "/")),
}

HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s+\S", re.MULTILINE)
ANCHOR = re.compile(r'^<a id="s(\d+(?:-\d+)*)"></a>\s*$')
SECTION = r"§\s?(\d+(?:\.\d+)*)"
# "REFERENCES.md §3.1", "REFERENCES.md §3.1, §3.2", "REFERENCES.md §2.3 and §2.4", "REFERENCES.md §1's".
CITATION = re.compile(r"REFERENCES\.md((?:\s*(?:,|;|and|or)?\s*§\s?\d+(?:\.\d+)*)+)")
# The old citation style, a bare number or "section N" after the file name, which the check above would miss.
BARE_CITATION = re.compile(r"REFERENCES\.md,?\s+(?:section\s+)?\d", re.IGNORECASE)


@functools.cache
def repository_files() -> tuple[pathlib.Path, ...]:
    """Tracked files plus new ones git does not ignore (so a file about to be added is checked too)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:  # no git, or not a checkout (e.g. an sdist)
        pytest.skip(f"git ls-files unavailable: {e}")
    paths = (ROOT / p for p in out.decode("utf-8", "surrogateescape").split("\0") if p)
    return tuple(p for p in paths if p.is_file())  # drop files deleted from the working tree


def read_text(path: pathlib.Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


@functools.cache
def reference_sections() -> frozenset[str]:
    assert REFERENCES.is_file(), "REFERENCES.md is missing from the repository root"
    return frozenset(HEADING.findall(read_text(REFERENCES)))


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in repository_files():
        text = read_text(path)
        for what, pattern in FORBIDDEN.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offenders, "files that cite or load something outside the repository:\n" + "\n".join(offenders)


def test_references_headings_are_unique_and_anchored():
    lines = read_text(REFERENCES).splitlines()
    numbers = []
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if not m:
            continue
        number = m.group(1)
        numbers.append(number)
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        anchor = ANCHOR.match(previous)
        assert anchor and anchor.group(1) == number.replace(".", "-"), (
            f'REFERENCES.md section {number} needs the anchor <a id="s{number.replace(".", "-")}"></a> '
            f"on the line before its heading"
        )
    assert numbers, "REFERENCES.md has no numbered sections"
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"REFERENCES.md numbers these sections twice: {duplicates}"


def test_every_citation_names_an_existing_section():
    sections = reference_sections()
    missing = []
    for path in repository_files():
        if path == REFERENCES:
            continue
        text = read_text(path)
        for m in CITATION.finditer(text):
            for number in re.findall(SECTION, m.group(1)):
                if number not in sections:
                    line = text.count("\n", 0, m.start()) + 1
                    missing.append(f"{path.relative_to(ROOT)}:{line}: REFERENCES.md §{number}")
        for m in BARE_CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            missing.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} (cite sections as 'REFERENCES.md §N')")
    assert not missing, "citations of REFERENCES.md that do not resolve:\n" + "\n".join(missing)


def test_cross_references_inside_references_resolve():
    sections = reference_sections()
    text = read_text(REFERENCES)
    missing = sorted({n for n in re.findall(SECTION, text) if n not in sections})
    assert not missing, f"REFERENCES.md refers to sections it does not have: {missing}"


def test_citations_are_found_at_all():
    """Guards the citation pattern itself: the code cites REFERENCES.md in many places."""
    cited = sum(
        len(CITATION.findall(read_text(p)))
        for p in repository_files()
        if p.suffix == ".py" and p != pathlib.Path(__file__).resolve()
    )
    assert cited >= 10, f"only {cited} REFERENCES.md § citations found in Python files"
