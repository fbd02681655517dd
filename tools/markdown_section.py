"""The benchmark tools' one way of putting a table into a Markdown file (their --write)."""

from __future__ import annotations

from pathlib import Path


def write_marked_section(path: Path, marker: str, text: str) -> None:
    """Replace the text between `<!-- MARKER:start -->` and `<!-- MARKER:end -->` in `path` (appended
    when absent), writing a temporary file first so an interrupted write leaves the old file."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc)
    tmp.replace(path)
