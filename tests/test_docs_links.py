"""The documentation's links resolve: relative links in README.md and docs/*.md point at files that exist (and, for
``#anchor`` links into markdown, at a heading as GitHub slugs it), and every document the code cites exists.

Reads files only, relative to the repository root found from this file's path.
"""

import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "recipes" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = ["perft_peft", "trainer", "recipes", "benchmarks", "tests"]
CODE_FILES = ["setup.py", "setup.cfg", "Makefile", "perft_peft_autoload.py"]
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".cfg", ".md", ".txt"}

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# A cited document: docs/<page>.md, or an upper-case document name such as DESIGN.md or README.md.
DOC_REF = re.compile(r"(?<![\w/.-])((?:docs/[\w.-]+|[A-Z][A-Z0-9_-]*)\.md)\b")
# A cited section: `docs/<page>.md, section "Title"`, `docs/<page>.md "Title"`, `README "Title"` and the like.
SECTION_REF = re.compile(
    r"(?<![\w/.-])(docs/[\w.-]+\.md|README(?:\.md)?)(?:'s)?[,:]?\s+(?:section\s+)?"
    r"(?:\"([^\"\n]+)\"|'([^'\n]+)'|“([^”\n]+)”)"
)


def prose_lines(text):
    """The lines of a markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: rendered text, lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = CODE_SPAN.sub(lambda m: m.group(2), text).replace("*", "")
    text = "".join(c for c in text.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(path):
    """Every heading anchor of a markdown file, duplicates numbered as GitHub numbers them."""
    seen, found = {}, set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def headings(path):
    """The text of every heading of a markdown file, code spans unwrapped."""
    return {
        CODE_SPAN.sub(lambda m: m.group(2), m.group(1)).strip()
        for line in prose_lines(path.read_text(encoding="utf-8"))
        if (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line))
    }


def dead_links(page):
    """``(link, reason)`` for each relative link of ``page`` whose file or heading does not exist."""
    dead = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                dead.append((target, f"no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"))
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                dead.append((target, f"no heading with anchor #{anchor} in {file.relative_to(ROOT)}"))
    return dead


def code_files():
    yield from (ROOT / name for name in CODE_FILES if (ROOT / name).is_file())
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if (
                path.suffix in CODE_SUFFIXES
                and path.is_file()
                and path != Path(__file__).resolve()
                and "results" not in path.relative_to(ROOT).parts
                and ".venv" not in path.parts
            ):
                yield path


def dead_references(path):
    """``(reference, reason)`` for each document (or document section) cited in ``path`` that does not exist."""
    text = path.read_text(encoding="utf-8", errors="replace")
    dead = []
    for name in DOC_REF.findall(text):
        if not any((base / name).exists() for base in (ROOT, path.parent)):
            dead.append((name, "no such file"))
    for name, *titles in SECTION_REF.findall(text):
        title = next(t for t in titles if t)
        file = ROOT / (name if name.endswith(".md") else name + ".md")
        title = CODE_SPAN.sub(lambda m: m.group(2), title)
        if file.exists() and not any(heading.startswith(title) for heading in headings(file)):
            dead.append((f'{name} "{title}"', f"no such heading in {file.relative_to(ROOT)}"))
    return dead


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    dead = dead_links(page)
    assert not dead, (
        "dead links in " + str(page.relative_to(ROOT)) + ":\n" + "\n".join(f"  ({t}): {why}" for t, why in dead)
    )


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {
        (readme.parent / target.partition("#")[0]).resolve()
        for line in prose_lines(readme.read_text(encoding="utf-8"))
        for target in LINK.findall(line)
    }
    unlinked = [p.name for p in PAGES if p.parent == ROOT / "docs" and p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_code_cites_only_documents_that_exist():
    dead = {str(path.relative_to(ROOT)): refs for path in code_files() if (refs := dead_references(path))}
    assert not dead, "documents cited but missing:\n" + "\n".join(
        f"  {path}: {ref} ({why})" for path, refs in dead.items() for ref, why in refs
    )


def test_the_checks_catch_what_they_should(tmp_path, monkeypatch):
    """The checkers themselves, on files written here: a dead file, a dead anchor, a dead citation are reported."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# A page\n\n## Training data (`x.data`)\n\n## Training data (`x.data`)\n\n"
        "[ok](#training-data-xdata) [ok](#training-data-xdata-1) [ok](a.md#a-page) [web](https://x.y)\n"
        "[gone](b.md) [bad anchor](#training-data) `[in code](c.md)`\n"
        "```\n[in a fence](d.md)\n```\n",
        encoding="utf-8",
    )
    assert dead_links(page) == [
        ("b.md", "no file docs/b.md"),
        ("#training-data", "no heading with anchor #training-data in docs/a.md"),
    ]
    code = tmp_path / "code.py"
    code.write_text('"""See docs/a.md, section "A page", docs/a.md "Nope", DESIGN.md and docs/b.md."""\n')
    assert dead_references(code) == [
        ("DESIGN.md", "no such file"),
        ("docs/b.md", "no such file"),
        ('docs/a.md "Nope"', "no such heading in docs/a.md"),
    ]
