"""One renderer for every page advmix writes: the report (Markdown and a self-contained HTML page), the generated
sections of README.md and docs/results.md, and the Prefect flow's artifact. A page is a list of blocks, rendered
twice so that the Markdown and the HTML never disagree.

The HTML is self-contained (images as data URIs, inline CSS, no script), so it can be archived or mailed and still
render offline; the Markdown references the PNGs beside it, so it reads well in a repository browser. The little
inline Markdown the blocks use (`code`, **bold**, *italic*) renders as such in the HTML, in tables too.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Callout:
    """A paragraph that must not be missed (a perturbation set below its bar, a partial report)."""

    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    wide: bool = False  # many columns: the HTML scrolls it sideways instead of wrapping its cells


@dataclass(frozen=True)
class Image:
    """A PNG: bytes to embed in the HTML, a path (relative to the Markdown file) for the Markdown, or why it is
    missing."""

    caption: str
    md_path: str
    data: bytes | None
    note: str = ""


@dataclass(frozen=True)
class Pre:
    text: str
    language: str = ""


Block = Heading | Para | Callout | Table | Image | Pre


def markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        match block:
            case Heading(level, text):
                out.append(f"{'#' * level} {text}")
            case Para(text):
                out.append(text)
            case Callout(text):
                out.append(f"> **{text}**")
            case Table(headers, rows):
                lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
                out.append("\n".join(lines))
            case Image(caption, md_path, data, note):
                out.append(f"![{caption}]({md_path})" if data else f"*Missing: {note}; skipped.*")
            case Pre(text, language):
                out.append(f"```{language}\n{text.rstrip()}\n```")
            case _:
                raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(out) + "\n"


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.wide { overflow-x: auto; }
.callout { border-left: 4px solid #c60; background: #fff6ec; padding: 0.6em 1em; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
code { background: #f3f3f3; padding: 0 0.2em; } .missing { color: #a33; font-style: italic; }
"""


def html_page(blocks: list[Block], title: str) -> str:
    """One self-contained page: images as data URIs, inline CSS, no script, no external reference."""
    out = []
    for block in blocks:
        match block:
            case Heading(level, text):
                out.append(f"<h{level}>{inline(text)}</h{level}>")
            case Para(text):
                out.append(f"<p>{inline(text)}</p>")
            case Callout(text):
                out.append(f'<p class="callout">{inline(text)}</p>')
            case Table(headers, rows, wide):
                head = "".join(f"<th>{inline(str(h))}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                out.append(f'<div class="wide">{table}</div>' if wide else table)
            case Image(caption, _, data, note):
                if data:
                    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                    out.append(f'<img src="{uri}" alt="{html.escape(caption)}">')
                else:
                    out.append(f'<p class="missing">Missing: {html.escape(note)}; skipped.</p>')
            case Pre(text, _):
                out.append(f"<pre>{html.escape(text.rstrip())}</pre>")
            case _:
                raise TypeError(f"unknown block {block!r}")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(out) + "\n</body>\n</html>\n")


def inline(text: str) -> str:
    """The inline Markdown the blocks use (`code`, **bold**, *italic*) as HTML, everything else escaped."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
