#!/usr/bin/env python3
"""Checks the relative links of the project's Markdown files: every linked file exists,
and every #anchor names a heading (or an explicit <a id/name>) of the page it points to,
by GitHub's rules. External links (http:, https:, mailto:, ...) are not followed.

    scripts/check-links.py              # the project's docs (DEFAULT_GLOBS), from the repo root
    scripts/check-links.py FILE.md ...  # these files only

Prints one line per broken link (`file:line: link: problem`) and exits 1 if there is any.
"""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GLOBS = ["README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md",
                 "docs/**/*.md", "istio/**/*.md", "tests/**/*.md"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the target may be wrapped in <...>.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(<[^>]*>|\S+)")
REF_USE = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])+)\]\[([^\]]*)\]")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (Markdown and HTML stripped), lower-cased,
    every character that is not a letter, digit, space, '-' or '_' dropped, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "")
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def prose_lines(text: str):
    """(line number, line) of every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
                continue
            if marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip()[len(marker):]:
                fence = None
                continue
        if fence is None:
            yield number, line


def anchors(path: Path, cache: dict) -> set:
    if path not in cache:
        found, seen = set(), {}
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            found.update(HTML_ANCHOR.findall(line))
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def check_target(source: Path, target: str, cache: dict) -> str | None:
    """The problem with one link target, or None."""
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if SCHEME.match(target) or target.startswith("//"):
        return None
    path_part, _, fragment = target.partition("#")
    path_part = unquote(path_part)
    if path_part.startswith("/"):
        dest = ROOT / path_part.lstrip("/")
    elif path_part:
        dest = source.parent / path_part
    else:
        dest = source
    if not dest.exists():
        return f"no such file: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if fragment and dest.is_file() and dest.suffix.lower() == ".md":
        if unquote(fragment).lower() not in {a.lower() for a in anchors(dest, cache)}:
            return f"no anchor #{fragment} in {dest.name}"
    return None


def check_file(path: Path, cache: dict) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = list(prose_lines(text))
    definitions = {}
    for number, line in lines:
        m = REF_DEF.match(line)
        if m:
            definitions[m.group(1).lower()] = (number, m.group(2))
    problems = []
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    for number, line in lines:
        if REF_DEF.match(line):
            continue
        prose = CODE_SPAN.sub("", line)
        for m in INLINE.finditer(prose):
            problem = check_target(path, m.group(1), cache)
            if problem:
                problems.append(f"{shown}:{number}: {m.group(1)}: {problem}")
        for m in REF_USE.finditer(prose):
            label = (m.group(2) or m.group(1)).lower()
            if label not in definitions:
                problems.append(f"{shown}:{number}: [{label}]: no link definition")
    for label, (number, target) in definitions.items():
        problem = check_target(path, target, cache)
        if problem:
            problems.append(f"{shown}:{number}: [{label}]: {target}: {problem}")
    return problems


def main(argv: list[str]) -> int:
    if argv:
        files = [Path(a).resolve() for a in argv]
    else:
        files = sorted({p for pattern in DEFAULT_GLOBS for p in ROOT.glob(pattern)})
    cache: dict = {}
    problems = [p for f in files for p in check_file(f, cache)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} broken link(s) in {len(files)} file(s)")
        return 1
    print(f"links: {len(files)} file(s) checked, no broken relative link")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
