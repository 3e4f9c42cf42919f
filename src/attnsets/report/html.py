"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts, nothing
fetched from the network)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

from attnsets.report.style import SavedFigure
from attnsets.report.tables import fmt

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1d;
       max-width: 1180px; margin: 0 auto; padding: 1.2em 1.6em 3em; line-height: 1.45;
       background: #ffffff; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 2px solid #0072B2;
     padding-bottom: 0.15em; }
.meta { color: #555; font-size: 0.9em; }
nav { background: #f3f6f9; padding: 0.5em 1em; border-radius: 6px; font-size: 0.92em; }
nav a { margin-right: 1em; color: #0072B2; text-decoration: none; }
.summary li { margin: 0.35em 0; }
.missing { background: #fff6e5; border-left: 4px solid #E69F00; padding: 0.4em 1em; }
.ok { background: #eef8f3; border-left: 4px solid #009E73; padding: 0.4em 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.84em; margin: 0.6em 0; }
th, td { border: 1px solid #d5d9de; padding: 0.25em 0.55em; text-align: right;
         white-space: nowrap; }
th { background: #eef2f6; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.warn { background: #fde3d6 !important; font-weight: 600; }
figure { margin: 1.4em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { font-size: 0.9em; color: #333; margin-top: 0.4em; }
.files { font-size: 0.85em; color: #555; }
"""


@dataclass
class TableBlock:
    """A table shown in the page: `display` is what is rendered, `files` the written copies."""

    anchor: str
    title: str
    caption: str
    display: pd.DataFrame
    files: list[str]
    warn: dict[str, str] = field(default_factory=dict)  # column -> column of a bool flag


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_table(block: TableBlock) -> str:
    frame = block.display
    if frame.empty:
        return "<p><em>No rows.</em></p>"
    text_columns = {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{_escape(c)}</th>'
                   for c in frame.columns if not str(c).startswith("_"))
    rows = []
    for _, record in frame.iterrows():
        cells = []
        for column in frame.columns:
            if str(column).startswith("_"):
                continue
            classes = ["text"] if column in text_columns else []
            flag = block.warn.get(str(column))
            if flag and bool(record.get(flag, False)):
                classes.append("warn")
            value = record[column]
            cells.append(f'<td class="{" ".join(classes)}">{_escape(fmt(value, str(column)))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _links(paths: list[str]) -> str:
    return " · ".join(f'<a href="{_escape(p)}">{_escape(p.rsplit(".", 1)[-1].upper())}</a>'
                      for p in paths)


def render_figure(figure: SavedFigure, files: list[str]) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure id="fig-{_escape(figure.name)}">'
            f'<img src="data:image/png;base64,{data}" alt="{_escape(figure.title)}">'
            f"<figcaption><strong>Figure {_escape(figure.label)}. {_escape(figure.title)}."
            "</strong> "
            f"{_escape(figure.caption)} <span class=\"files\">({_links(files)})</span>"
            "</figcaption></figure>")


def render_page(*, title: str, meta: str, summary: list[str], missing: list[str],
                tables: list[TableBlock], figures: list[tuple[SavedFigure, list[str]]],
                guide: str) -> str:
    """The whole page. Every argument is plain text except the pre-rendered parts here."""
    nav = ['<a href="#summary">Summary</a>', '<a href="#missing">Missing</a>']
    nav += [f'<a href="#{_escape(t.anchor)}">{_escape(t.title)}</a>' for t in tables]
    nav += ['<a href="#figures">Figures</a>']
    summary_html = "<ul class=\"summary\">" + "".join(f"<li>{_escape(s)}</li>" for s in summary) \
        + "</ul>"
    if missing:
        missing_html = ('<div class="missing"><ul>' + "".join(f"<li>{_escape(m)}</li>"
                                                              for m in missing)
                        + "</ul></div>")
    else:
        missing_html = ('<div class="ok"><p>Nothing is missing: every cell finished and every '
                        "figure could be drawn.</p></div>")
    table_html = "".join(
        f'<section id="{_escape(t.anchor)}"><h2>{_escape(t.title)}</h2>'
        f"<p>{_escape(t.caption)} <span class=\"files\">({_links(t.files)})</span></p>"
        f"{render_table(t)}</section>" for t in tables)
    if figures:
        figure_html = "".join(render_figure(f, files) for f, files in figures)
    else:
        figure_html = "<p><em>No figures: see Missing.</em></p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_escape(title)}</h1><p class=\"meta\">{_escape(meta)}</p>"
        f"<nav>{''.join(nav)}</nav>"
        f'<section id="summary"><h2>Summary</h2>{summary_html}</section>'
        f'<section id="missing"><h2>Missing or not shown</h2>{missing_html}</section>'
        f"{table_html}"
        f'<section id="figures"><h2>Figures</h2><p>{_escape(guide)}</p>{figure_html}</section>'
        "</body></html>\n")
