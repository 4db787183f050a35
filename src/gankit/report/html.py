"""The pieces every report page is made of: escaping, inline images, the page shell with its
styles and scripts inline (a page opens from disk with no network), and path hygiene.
"""

from __future__ import annotations

import base64
import json
import os
from html import escape
from importlib.resources import files as package_files
from pathlib import Path

from gankit.version import __version__

_ASSETS = package_files("gankit.report") / "assets"
_image_cache: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> data URI


def esc(value) -> str:
    """Text (or anything printable) made safe for HTML content and attribute values."""
    return escape(str(value), quote=True)


def asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI (cached by path, size and modification time: a grid
    saved once is encoded once per process, however often a report is refreshed)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _image_cache:
        if len(_image_cache) > 512:
            _image_cache.clear()
        _image_cache[key] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return _image_cache[key]


def image(path: Path, alt: str, id: str = "") -> str:
    ident = f' id="{esc(id)}"' if id else ""
    return f'<img{ident} src="{data_uri(path)}" alt="{esc(alt)}">'


def figure(path: Path, caption: str, alt: str = "") -> str:
    return f"<figure>{image(path, alt or caption)}<figcaption>{caption}</figcaption></figure>"


def script_json(data) -> str:
    """JSON for a ``<script type="application/json">`` element (no ``</`` can end it early;
    infinities and NaN, which JSON lacks, become null)."""
    text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def _finite(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def scrub_paths(text: str, *roots: Path) -> str:
    """``text`` without the machine's absolute paths: the given roots (a run folder's parent)
    become relative, the home folder ``~``. A page may travel; a path names its user."""
    for root in sorted({str(r.resolve()) for r in roots}, key=len, reverse=True):
        text = text.replace(root + os.sep, "").replace(root, ".")
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = text.replace(home, "~")
    return text


def page(title: str, body: str, data: dict) -> str:
    """A whole self-contained HTML page: ``body`` with gankit's styles, uPlot and the page
    script inline, and ``data`` as the JSON the script draws from."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="gankit {esc(__version__)}">\n'
        f"<title>{esc(title)}</title>\n"
        f"<style>\n{asset('uPlot.min.css')}\n{asset('report.css')}</style>\n"
        "</head>\n<body>\n"
        f"{body}\n"
        f'<footer class="note"><p>Written by gankit {esc(__version__)}. Curves drawn with '
        "uPlot (MIT licence, inline): drag across a chart to zoom, double-click to zoom "
        "out.</p></footer>\n"
        f'<script type="application/json" id="gankit-data">{script_json(data)}</script>\n'
        f"<script>\n{asset('uPlot.iife.min.js')}\n</script>\n"
        f"<script>\n{asset('report.js')}</script>\n"
        "</body>\n</html>\n"
    )


def table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table of already-escaped cells; columns in ``numeric`` align right."""

    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="num"' if i in numeric else ""
        if text.startswith(("<td class=", "<th class=")):  # a cell with its own class
            return text
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value) -> str:
    """A metric as table text: 4 significant digits, thousands grouped for large ones."""
    if not is_number(value):
        return esc(value if value is not None else "–")
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:
        return "NaN"
    if abs(value) >= 1e4 and abs(value) != float("inf"):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def sections(parts: list[tuple[str, str, str]]) -> str:
    """A navigation bar and the page's sections, from (anchor, title, html) triples."""
    nav = "".join(f'<a href="#{a}">{esc(t.split(":")[0])}</a>' for a, t, _ in parts)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{h}</section>' for a, t, h in parts)
    return f"<nav>{nav}</nav>{body}"


def missing_list(items: list[str]) -> str:
    return "<ul>" + "".join(f'<li class="missing">{esc(m)}</li>' for m in items) + "</ul>"
