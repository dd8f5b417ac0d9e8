"""The champion's model card as the API serves it: the Markdown, a safe HTML rendering, and the plots.

Files are read from the loaded bundle's folder, only by names from a fixed list, and only when they match the
sha256 recorded in the bundle's manifest: no caller-supplied path ever reaches the file system. The HTML
renderer covers the Markdown the card uses (headings, paragraphs, lists, tables, emphasis, code, images) and
escapes everything else, so the page can insert it as is; it keeps the serving package free of a Markdown
dependency.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from functools import lru_cache
from pathlib import Path

from chalicelib.model.bundle import MANIFEST
from chalicelib.model.card import PLOTS
from chalicelib.serving.errors import NotFound

CARD = "model_card.md"
PLOT_NAMES = tuple(PLOTS)  # roc, pr, calibration, importance, dca (decision curve; absent in older bundles)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(plots/([\w.-]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")


def _read_verified(folder: Path, rel: str) -> bytes:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        data = (folder / rel).read_bytes()
    except (OSError, ValueError, KeyError):
        raise NotFound(rel, "is not part of the current model's bundle") from None
    if files.get(rel) != hashlib.sha256(data).hexdigest():
        raise NotFound(rel, "does not match the sha256 in the bundle's manifest") from None
    return data


def markdown(folder: Path) -> str:
    return _read_verified(folder, CARD).decode()


def plot(folder: Path, name: str) -> bytes:
    """PNG bytes of one of the card's plots; ``name`` must be one of PLOT_NAMES."""
    if name not in PLOT_NAMES:
        raise NotFound("name", f"unknown plot {name[:40]!r}; available: {', '.join(PLOT_NAMES)}")
    return _read_verified(folder, f"plots/{name}")


@lru_cache(maxsize=8)
def card_html(folder: Path) -> str:
    """The card rendered once per bundle folder (bundles never change once written)."""
    return to_html(markdown(folder))


def _inline(text: str) -> str:
    """Escape, then apply code spans, images (known plots only), bold and italic."""
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside a code span: escaped, nothing else
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        s = html.escape(part)
        s = _IMAGE.sub(
            lambda m: f'<img data-plot="{m[2]}" alt="{m[1]}">' if m[2] in PLOT_NAMES else m[1],
            s,
        )
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        out.append(_ITALIC.sub(r"<em>\1</em>", s))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(rows: list[str]) -> list[str]:
    header, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
    out = ["<table>", "<thead><tr>", *(f'<th scope="col">{_inline(c)}</th>' for c in header), "</tr></thead>"]
    out.append("<tbody>")
    for cells in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
    return [*out, "</tbody>", "</table>"]


def to_html(text: str) -> str:
    """HTML for the card's Markdown subset. Headings move down one level: the page owns the <h1>."""
    out: list[str] = []
    block: list[str] = []
    kind = ""

    def flush() -> None:
        nonlocal block, kind
        if kind == "p":
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        elif kind == "ul":
            out.extend(["<ul>", *(f"<li>{_inline(item)}</li>" for item in block), "</ul>"])
        elif kind == "table":
            out.extend(_table(block))
        block, kind = [], ""

    for line in text.splitlines():
        stripped = line.strip()
        heading = re.match(r"(#{1,5})\s+(.*)", stripped)
        new_kind = "ul" if stripped.startswith("- ") else "table" if stripped.startswith("|") else "p"
        if not stripped or heading or (kind and new_kind != kind and not (kind == "ul" and line.startswith("  "))):
            flush()
        if heading:
            level = len(heading[1]) + 1
            out.append(f"<h{level}>{_inline(heading[2])}</h{level}>")
        elif stripped.startswith("- "):
            block.append(stripped[2:])
            kind = "ul"
        elif kind == "ul" and line.startswith("  ") and stripped:
            block[-1] += " " + stripped  # a wrapped list item
        elif stripped:
            block.append(stripped)
            kind = new_kind
    flush()
    return "\n".join(out)
