"""Colours, markers and figure output shared by every report figure.

Figures are built on `matplotlib.figure.Figure` directly (never pyplot), so the report neither
needs nor changes a global backend: PNG and SVG are rendered by the Agg and SVG canvases.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend

#: Okabe & Ito (2008), ordered so that the first colours are the most distinct on white;
#: yellow last because it is hard to see on a white background.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
             "#F0E442")
#: Paul Tol's "muted" scheme (colour-blind safe) for explainers, so that explainer colours are
#: never confused with model colours.
TOL_MUTED = ("#332288", "#117733", "#CC6677", "#88CCEE", "#AA4499", "#44AA99", "#999933",
             "#882255", "#DDCC77")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BASELINE_COLOUR = "#7F7F7F"
WITNESS_COLOUR = "#D55E00"
OTHER_COLOUR = "#BBBBBB"
SHADE_COLOUR = "#999999"
#: Text marking a value that is missing or does not apply ("n/a", "no cells"): dark enough to
#: read on white and on the light shading of the plots (contrast about 12:1).
MISSING_TEXT_COLOUR = "#333333"
MISSING_FONT_SIZE = 9.0
#: Sequential colour map for scores (perceptually uniform and colour-blind safe).
SCORE_CMAP = "viridis"
PNG_DPI = 130

RC = {
    "font.size": 9.5, "axes.titlesize": 10, "axes.labelsize": 9.5, "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6,
    "legend.frameon": False, "svg.hashsalt": "attnsets-report", "svg.fonttype": "path",
    "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
}


@dataclass(frozen=True)
class Palette:
    """The same model always gets the same colour and marker; explainers get their own colours
    (baselines such as `random` are grey)."""

    model_colours: dict[str, str]
    model_markers: dict[str, str]
    explainer_colours: dict[str, str]

    @staticmethod
    def for_names(models: list[str], explainers: list[str],
                  baselines: tuple[str, ...] = ("random",)) -> Palette:
        colours = {m: OKABE_ITO[i % len(OKABE_ITO)] for i, m in enumerate(models)}
        # Markers cycle with a different period than colours, so (colour, marker) pairs stay
        # distinct for many more models than there are colours.
        markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
        informative = [e for e in explainers if e not in baselines]
        explainer_colours = {e: TOL_MUTED[i % len(TOL_MUTED)] for i, e in enumerate(informative)}
        explainer_colours.update({e: BASELINE_COLOUR for e in explainers if e in baselines})
        return Palette(colours, markers, explainer_colours)

    def model(self, name: str) -> str:
        return self.model_colours.get(name, BASELINE_COLOUR)

    def marker(self, name: str) -> str:
        return self.model_markers.get(name, "o")

    def explainer(self, name: str) -> str:
        return self.explainer_colours.get(name, BASELINE_COLOUR)


@contextmanager
def report_style() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def fitted_legend(figure: Figure, handles: list[Any], *, loc: str = "outside lower center",
                  max_cols: int = 6, **kwargs: Any) -> Legend:
    """A figure legend with as many columns as fit in the figure's width (at most `max_cols`).

    A legend placed outside the axes does not widen the figure: with too many columns its
    ends are cut off in the saved image, so the column count is reduced until it fits.
    """
    renderer = FigureCanvasAgg(figure).get_renderer()
    available = figure.bbox.width * 0.98
    legend = None
    for ncols in range(max(1, min(max_cols, len(handles))), 0, -1):
        if legend is not None:
            legend.remove()
        legend = figure.legend(handles=handles, loc=loc, ncols=ncols, **kwargs)
        if legend.get_window_extent(renderer).width <= available:
            break
    assert legend is not None  # the loop runs at least once
    return legend


@dataclass(frozen=True)
class SavedFigure:
    """A figure written as PNG (and SVG unless asked not to); `png` holds the PNG bytes for
    embedding; `label` is its number in the report ("1", "4b", ...)."""

    label: str
    name: str
    title: str
    caption: str
    png_path: Path
    svg_path: Path | None
    png: bytes


def save_figure(figure: Figure, directory: Path, label: str, name: str, title: str,
                caption: str, *, svg: bool = True) -> SavedFigure:
    """Write `name`.png and, with `svg`, `name`.svg into `directory` (metadata without dates,
    so the same results give the same files)."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    png_path = directory / f"{name}.png"
    png_path.write_bytes(buffer.getvalue())
    svg_path = None
    if svg:
        # The layout is fixed by the PNG pass; running it again for the SVG would only cost time.
        figure.set_layout_engine("none")
        svg_path = directory / f"{name}.svg"
        figure.savefig(svg_path, format="svg", metadata={"Date": None, "Creator": None})
    return SavedFigure(label, name, title, caption, png_path, svg_path, buffer.getvalue())
