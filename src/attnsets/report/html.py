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
/* Tables do not run past the page: headers and cells wrap at spaces (a number and its CI are
   separate words), so no scroll container is needed; the browser test measures this. */
table { border-collapse: collapse; font-size: 0.84em; margin: 0.6em 0; max-width: 100%; }
th, td { border: 1px solid #d5d9de; padding: 0.25em 0.55em; text-align: right;
         white-space: pre-line; vertical-align: top; }
th { background: #eef2f6; vertical-align: bottom; overflow-wrap: break-word; }
td.text, th.text { text-align: left; overflow-wrap: break-word; }
td.note { min-width: 9em; }
tr:nth-child(even) td { background: #fafbfc; }
td.warn { background: #fde3d6 !important; font-weight: 600; }
td.na { color: #1d1d1d; font-weight: 600; font-style: italic; }
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
    wrap: set[str] = field(default_factory=set)  # free-text columns given a minimum width
    #: Left-aligned text columns; None: every column that is not numeric. Cells that fold
    #: several numbers into one string are still numbers and stay right-aligned.
    text: set[str] | None = None


#: How a missing or not-applicable value is shown in the page's tables (the Markdown and the
#: summary keep fmt's "–"): a word in the body colour reads better than a thin grey dash.
MISSING_MARK = "n/a"
#: Short words written in capitals in column headers.
ACRONYMS = {"auroc": "AUROC", "auprc": "AUPRC", "aopc": "AOPC", "ci": "CI", "id": "id"}


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def header_text(column: str) -> str:
    """One column style in the page: "mean_auroc" -> "mean AUROC"; prose stays as it is."""
    return " ".join(ACRONYMS.get(word, word) for word in str(column).split("_"))


def render_table(block: TableBlock) -> str:
    frame = block.display
    if frame.empty:
        return "<p><em>No rows.</em></p>"
    text_columns = block.text if block.text is not None else \
        {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">'
                   f"{_escape(header_text(c))}</th>"
                   for c in frame.columns if not str(c).startswith("_"))
    rows = []
    for _, record in frame.iterrows():
        cells = []
        for column in frame.columns:
            if str(column).startswith("_"):
                continue
            text = fmt(record[column], str(column))
            classes = ["text"] if column in text_columns else []
            if column in block.wrap:
                classes.append("note")
            if text == fmt(None):
                text = MISSING_MARK
                classes.append("na")
            flag = block.warn.get(str(column))
            if flag and bool(record.get(flag, False)):
                classes.append("warn")
            cells.append(f'<td class="{" ".join(classes)}">{_escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="table-{_escape(block.anchor)}"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


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
