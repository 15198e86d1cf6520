"""Small helpers that build one self-contained HTML page: escaped text, tables, embedded images.

Every image is embedded as a base64 ``data:`` URI and the style sheet is inline, so a report is one
file that opens offline, can be mailed or archived, and never fetches anything.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from betavae.files import write_atomic

MIME_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

STYLE = """
:root { --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --accent: #2864c7; --warn: #b35c00; --bg-soft: #f5f7fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
header { padding: 20px 32px 12px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 4px 0; color: var(--muted); max-width: 70em; }
nav { position: sticky; top: 0; background: white; border-bottom: 1px solid var(--line); padding: 6px 32px; z-index: 1;
      display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
main { padding: 0 32px 48px; max-width: 1400px; }
section { padding-top: 8px; border-bottom: 1px solid var(--line); padding-bottom: 16px; }
h2 { font-size: 18px; margin: 18px 0 6px; }
h3 { font-size: 15px; margin: 14px 0 4px; }
p.caption, p.note { color: var(--muted); margin: 4px 0 10px; max-width: 70em; font-size: 14px; }
p.empty { background: var(--bg-soft); border-left: 3px solid var(--line); padding: 8px 12px; max-width: 70em; }
code { background: var(--bg-soft); padding: 1px 4px; border-radius: 3px; font-size: 13px; }
img { max-width: 100%; height: auto; }
img.pixelated { image-rendering: pixelated; }
figure { margin: 8px 0 14px; display: inline-block; vertical-align: top; }
figcaption { color: var(--muted); font-size: 13px; max-width: 60em; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #eaf1fd; font-weight: 600; }
ul.findings { padding-left: 0; list-style: none; max-width: 70em; }
ul.findings li { margin: 6px 0; padding: 6px 10px; border-left: 4px solid var(--accent); background: var(--bg-soft); }
ul.findings li.warning { border-left-color: var(--warn); }
span.level { font-size: 12px; text-transform: uppercase; font-weight: 700; margin-right: 6px; color: var(--accent); }
li.warning span.level { color: var(--warn); }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
div.cards { display: flex; flex-wrap: wrap; gap: 16px; }
div.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px; width: 340px; }
div.card.highlight { border: 2px solid var(--accent); }
div.card h3 { margin: 0 0 6px; }
div.recommendation { border: 2px solid var(--accent); border-radius: 6px; padding: 10px 14px; max-width: 70em; background: #f3f7fe; }
"""


@dataclass
class Section:
    """One titled part of a page; ``id`` is its anchor (and what tests look for)."""

    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    """``value`` as text safe to put inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data:MIME;base64,...`` for embedding ``data`` in the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str, alt: str, name: str, pixelated: bool = False, width: int | None = None) -> str:
    """An ``<img>`` with ``data`` embedded; ``name`` goes into ``data-figure`` so a page can be checked."""
    css = ' class="pixelated"' if pixelated else ""
    size = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}" data-figure="{esc(name)}"{css}{size}>'


def img_file(path: Path, alt: str, name: str, pixelated: bool = False, width: int | None = None) -> str:
    """An embedded ``<img>`` of the file at ``path`` (PNG, GIF or JPEG)."""
    return img(Path(path).read_bytes(), MIME_TYPES[Path(path).suffix.lower()], alt, name, pixelated, width)


def figure(image_html: str, caption: str) -> str:
    return f"<figure>{image_html}<figcaption>{caption}</figcaption></figure>"


def fmt_number(value: Any) -> str:
    """Numbers to 4 significant digits (integers whole); everything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], highlight: Iterable[int] = ()) -> str:
    """A table; numeric cells are right-aligned and shortened, text cells escaped; rows whose
    position is in ``highlight`` are emphasised."""
    marked = set(highlight)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{esc(fmt_number(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{esc(fmt_number(c))}</td>"
            for c in row
        )
        attrs = ' class="highlight"' if i in marked else ""
        body.append(f"<tr{attrs}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def empty(text_html: str) -> str:
    """A boxed note standing in for a section's content that does not exist yet."""
    return f'<p class="empty">{text_html}</p>'


def page(title: str, intro_html: str, sections: Sequence[Section]) -> str:
    """The whole document: header, a link bar to every section, the sections."""
    links = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><header><h1>{esc(title)}</h1>{intro_html}</header><nav>{links}</nav><main>{body}</main></body></html>\n"
    )


def write_page(path: Path, document: str) -> Path:
    """Write ``document`` to ``path`` atomically (a reader never sees half a report)."""
    write_atomic(Path(path), lambda f: f.write(document.encode("utf-8")))
    return Path(path)
