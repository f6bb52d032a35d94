"""Sections of the docs that benchmarks own, each between its own start and end markers."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BENCHMARKS_FILE = DOCS / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, section: str, path: Path = BENCHMARKS_FILE) -> None:
    """Replace only the section called ``name`` (``section`` carries no markers); others own the rest."""
    start, end = markers(name)
    block = f"{start}\n{section.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
