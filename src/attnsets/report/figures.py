"""Figures 1, 2, 3 and 5 of the report (the example bags, figure 4, live in examples.py).

Each function takes the study (and the tables computed from it) and returns a matplotlib
Figure, or None with nothing to draw; the caller records why in the report's "missing" list.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from attnsets.report.collect import StudyView
from attnsets.report.style import (
    BASELINE_COLOUR,
    MISSING_FONT_SIZE,
    MISSING_TEXT_COLOUR,
    SHADE_COLOUR,
    Palette,
    fitted_legend,
    new_figure,
)

CHANCE_AUROC = 0.5
#: Widest figure (inches) shown at full size in the report page (body 1180 px at 130 dpi);
#: wider figures are scaled down there and their text becomes small.
PAGE_WIDTH_IN = 9.2
METRIC_LABELS = {"balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
                 "auroc": "AUROC", "auprc": "AUPRC", "log_loss": "log loss"}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


def _grid(figure: Figure, n_panels: int, n_cols: int) -> list[Axes]:
    rows = math.ceil(n_panels / n_cols)
    axes = figure.subplots(rows, n_cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return axes[:n_panels]


def _panel_title(study: StudyView, dataset: str) -> str:
    cells = study.cells(dataset)
    if not cells:
        return dataset
    return f"{dataset}  ({cells[0].pool} · {cells[0].rule})"


def _model_legend(figure: Figure, models: list[str], palette: Palette, extra: list | None = None,
                  title: str = "model") -> None:
    handles = [Line2D([], [], linestyle="", marker=palette.marker(m), color=palette.model(m),
                      markersize=7, label=m) for m in models]
    fitted_legend(figure, handles + (extra or []), title=title)


# ------------------------------------------------------------------ 1: silent-failure scatter
def silent_failure_figure(study: StudyView, palette: Palette) -> Figure | None:
    """Per rule: bag score vs importance of every trained member, the silent region shaded."""
    method = study.method
    data = study.members[study.members["explainer"] == method]
    data = data[~(data["bag_score"].isna() | data["importance"].isna())]
    if method is None or data.empty:
        return None
    panels = [d for d in study.datasets if d in set(data["dataset"])]
    n_cols = min(int(PAGE_WIDTH_IN // 3.9), len(panels))
    figure = new_figure(3.9 * n_cols, 3.5 * math.ceil(len(panels) / n_cols) + 0.7)
    criteria = study.done[0].criteria
    for ax, dataset in zip(_grid(figure, len(panels), n_cols), panels, strict=True):
        sub = data[data["dataset"] == dataset]
        min_bag = float(sub["min_bag_score"].iloc[0])
        max_imp = float(sub["max_importance"].iloc[0])
        ax.add_patch(Rectangle((0.0, min_bag), max_imp, 1.0 - min_bag, facecolor=SHADE_COLOUR,
                               alpha=0.28, edgecolor=SHADE_COLOUR, hatch="///", linewidth=0.8,
                               zorder=0))
        inside = (sub["bag_score"] >= min_bag) & (sub["importance"] <= max_imp)
        ax.text(max_imp / 2, min_bag + (1.0 - min_bag) / 2,
                f"silent failures: {int(inside.sum())} of {len(sub)}", ha="center", va="center",
                fontsize=8.5, fontweight="bold", zorder=4,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85,
                      "edgecolor": "none"})
        ax.axvline(CHANCE_AUROC, color=BASELINE_COLOUR, linestyle=":", linewidth=1, zorder=1)
        ax.axhline(min_bag, color=SHADE_COLOUR, linestyle="--", linewidth=0.8, zorder=1)
        ax.axvline(max_imp, color=SHADE_COLOUR, linestyle="--", linewidth=0.8, zorder=1)
        for model in study.models:
            points = sub[sub["model"] == model]
            if points.empty:
                continue
            ax.scatter(points["importance"], points["bag_score"], s=38, color=palette.model(model),
                       marker=palette.marker(model), edgecolor="white", linewidth=0.6, alpha=0.8,
                       zorder=3, clip_on=False)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(min(0.0, float(sub["bag_score"].min())) - 0.03, 1.03)
        ax.set_title(_panel_title(study, dataset))
        ax.set_xlabel(f"{method} importance {metric_label(criteria.importance_metric)} "
                      "(per member)")
        ax.set_ylabel(f"bag {metric_label(criteria.bag_metric)}")
    present = [m for m in study.models if m in set(data["model"])]
    extra = [Patch(facecolor=SHADE_COLOUR, alpha=0.4, hatch="///", label="silent-failure region"),
             Line2D([], [], color=BASELINE_COLOUR, linestyle=":", label="chance (0.5)")]
    _model_legend(figure, present, palette, extra)
    return figure


# ------------------------------------------------------------------ 2: AUROC distributions
def distribution_figure(study: StudyView, palette: Palette) -> Figure | None:
    """Per rule: boxes + points of member AUROC for each explainer x model."""
    data = study.members[~study.members["auroc"].isna()]
    if data.empty:
        return None
    panels = [d for d in study.datasets if d in set(data["dataset"])]
    explainers = [e for e in study.explainers if e in set(data["explainer"])]
    models = [m for m in study.models if m in set(data["model"])]
    width = max(4.5, 0.34 * len(explainers) * len(models) + 1.8)
    n_cols = 1 if 2 * width > PAGE_WIDTH_IN else min(2, len(panels))
    figure = new_figure(width * n_cols, 3.4 * math.ceil(len(panels) / n_cols) + 0.7)
    box_width = 0.8 / len(models)
    rng = np.random.default_rng(0)  # jitter only; fixed so the figure is reproducible
    for ax, dataset in zip(_grid(figure, len(panels), n_cols), panels, strict=True):
        sub = data[data["dataset"] == dataset]
        for e_index, explainer in enumerate(explainers):
            for m_index, model in enumerate(models):
                position = e_index + (m_index - (len(models) - 1) / 2) * box_width
                values = sub[(sub["explainer"] == explainer) & (sub["model"] == model)]["auroc"]
                colour = palette.model(model)
                if values.empty:
                    if study.cells(dataset, model):
                        ax.text(position, 0.03, "n/a", ha="center", va="bottom",
                                fontsize=MISSING_FONT_SIZE, fontweight="bold",
                                color=MISSING_TEXT_COLOUR, rotation=90)
                    continue
                box = ax.boxplot(values.to_numpy(), positions=[position],
                                 widths=box_width * 0.8, patch_artist=True, showfliers=False,
                                 manage_ticks=False)
                for patch in box["boxes"]:
                    patch.set(facecolor=colour, alpha=0.3, edgecolor=colour)
                for part in ("whiskers", "caps"):
                    for line in box[part]:
                        line.set(color=colour)
                for line in box["medians"]:
                    line.set(color="black", linewidth=1.2)
                jitter = rng.uniform(-box_width * 0.25, box_width * 0.25, size=len(values))
                ax.scatter(position + jitter, values, s=10, color=colour,
                           marker=palette.marker(model), alpha=0.85, zorder=3, linewidth=0)
        ax.axhline(CHANCE_AUROC, color=BASELINE_COLOUR, linestyle=":", linewidth=1)
        ax.set_xticks(range(len(explainers)), explainers,
                      rotation=20 if len(explainers) > 4 else 0)
        ax.set_xlim(-0.6, len(explainers) - 0.4)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel("importance AUROC (per member)")
        ax.set_title(_panel_title(study, dataset))
        ax.grid(axis="x", visible=False)
    _model_legend(figure, models, palette,
                  [Line2D([], [], color=BASELINE_COLOUR, linestyle=":", label="chance (0.5)")])
    return figure


# ------------------------------------------------------------------ 3: ensemble-size curves
def ensemble_figure(study: StudyView, curves: pd.DataFrame, palette: Palette) -> Figure | None:
    """Per rule: mean importance AUROC (q05-q95 band) and P(AUROC <= threshold) against K."""
    method = study.method
    data = curves[curves["explainer"] == method] if method else curves.iloc[0:0]
    if data.empty:
        return None
    panels = [d for d in study.datasets if d in set(data["dataset"])]
    figure = new_figure(9.0, 2.9 * len(panels) + 0.7)
    axes = figure.subplots(len(panels), 2, squeeze=False)
    for (ax_auc, ax_fail), dataset in zip(axes, panels, strict=True):
        sub = data[data["dataset"] == dataset]
        threshold = float(sub["threshold"].dropna().iloc[0]) if sub["threshold"].notna().any() \
            else math.nan
        drawn = [m for m in study.models if (sub["model"] == m).any()]
        for order, model in enumerate(drawn):
            line = sub[sub["model"] == model].sort_values("k")
            colour, marker = palette.model(model), palette.marker(model)
            # Models often share a curve (P(fail) = 0 for all): earlier models get larger
            # markers and wider lines, so that the later ones drawn on top leave them visible.
            size = 5.0 + 2.5 * (len(drawn) - 1 - order)
            width = 1.5 + 1.2 * (len(drawn) - 1 - order)
            ax_auc.fill_between(line["k"], line["auroc_q05"], line["auroc_q95"], color=colour,
                                alpha=0.18, linewidth=0)
            ax_auc.plot(line["k"], line["auroc_mean"], color=colour, marker=marker,
                        markersize=size, linewidth=width)
            ax_fail.plot(line["k"], line["p_fail"], color=colour, marker=marker,
                         markersize=size, linewidth=width, clip_on=False)
        ax_auc.axhline(CHANCE_AUROC, color=BASELINE_COLOUR, linestyle=":", linewidth=1)
        if not math.isnan(threshold):
            ax_auc.axhline(threshold, color=SHADE_COLOUR, linestyle="--", linewidth=0.9)
        ks = sorted(set(sub["k"].astype(int)))
        for ax in (ax_auc, ax_fail):
            ax.set_xticks(ks if len(ks) <= 12 else ks[:: math.ceil(len(ks) / 12)])
            ax.set_xlabel("ensemble size K (members combined)")
        ax_auc.set_ylim(0.0, 1.02)
        ax_fail.set_ylim(-0.03, 1.03)
        ax_auc.set_ylabel(f"{method} importance AUROC")
        label = f"{threshold:.2f}" if not math.isnan(threshold) else "threshold"
        ax_fail.set_ylabel(f"P(AUROC ≤ {label})")
        ax_auc.set_title(f"{_panel_title(study, dataset)}: mean, q05–q95 band")
        ax_fail.set_title(f"{dataset}: P(explanation fails)")
    present = [m for m in study.models if m in set(data["model"])]
    extra = [Line2D([], [], color=BASELINE_COLOUR, linestyle=":", label="chance (0.5)"),
             Line2D([], [], color=SHADE_COLOUR, linestyle="--", label="silent-failure threshold")]
    _model_legend(figure, present, palette, extra)
    return figure


# ------------------------------------------------------------------ 5: deletion curves
def _stack(curves: list[list[float]]) -> np.ndarray:
    """Ragged curves -> (n, longest) float array, NaN-padded."""
    longest = max(len(c) for c in curves)
    out = np.full((len(curves), longest), np.nan)
    for i, curve in enumerate(curves):
        out[i, :len(curve)] = np.asarray(curve, dtype=np.float64)
    return out


def _nanmean_rows(stacked: np.ndarray) -> np.ndarray:
    counts = (~np.isnan(stacked)).sum(axis=0)
    sums = np.nansum(stacked, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _pad_limits(ax: Axes, minimum_span: float) -> None:
    """Zoom on the curves (differences are often small) but never below `minimum_span`."""
    low, high = ax.get_ylim()
    if high - low < minimum_span:
        middle = (low + high) / 2
        low, high = middle - minimum_span / 2, middle + minimum_span / 2
    ax.set_ylim(max(low, -0.02), min(high, 1.02))


def deletion_figure(study: StudyView, palette: Palette) -> Figure | None:
    """Per rule x model: p(true class) as the top-scored instances are removed, per explainer,
    with the random-order reference; averaged over members and replicates."""
    grid: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    for cell in study.done:
        for method, result in cell.assessment.explainers.items():
            panel = grid.setdefault((cell.dataset, cell.model), {})
            for entry in result.aopc:
                if entry.curve:
                    panel.setdefault(method, []).append(entry.curve)
                if entry.random_curve:
                    panel.setdefault("\0random order", []).append(entry.random_curve)
    grid = {key: value for key, value in grid.items() if value}
    if not grid:
        return None
    datasets = [d for d in study.datasets if any(k[0] == d for k in grid)]
    models = [m for m in study.models if any(k[1] == m for k in grid)]
    figure = new_figure(3.3 * len(models) + 0.4, 2.7 * len(datasets) + 0.8)
    axes = figure.subplots(len(datasets), len(models), squeeze=False)
    explainers_drawn: list[str] = []
    for row, dataset in enumerate(datasets):
        for col, model in enumerate(models):
            ax = axes[row, col]
            panel = grid.get((dataset, model))
            ax.set_title(f"{dataset} · {model}")
            if not panel:
                ax.text(0.5, 0.5, "no cells", ha="center", va="center", transform=ax.transAxes,
                        fontsize=MISSING_FONT_SIZE, fontweight="bold", color=MISSING_TEXT_COLOUR)
                continue
            for method in [e for e in study.explainers if e in panel]:
                mean = _nanmean_rows(_stack(panel[method]))
                ax.plot(np.arange(len(mean)), mean, color=palette.explainer(method),
                        linewidth=1.6, marker=".", markersize=4)
                if method not in explainers_drawn:
                    explainers_drawn.append(method)
            if "\0random order" in panel:
                reference = _nanmean_rows(_stack(panel["\0random order"]))
                ax.plot(np.arange(len(reference)), reference, color="black", linestyle="--",
                        linewidth=1.1)
            _pad_limits(ax, minimum_span=0.1)
            if row == len(datasets) - 1:
                ax.set_xlabel("instances removed (highest score first)")
            if col == 0:
                ax.set_ylabel("p(true class)")
    handles = [Line2D([], [], color=palette.explainer(e), linewidth=1.6, label=e)
               for e in explainers_drawn]
    handles.append(Line2D([], [], color="black", linestyle="--", label="random order"))
    fitted_legend(figure, handles, title="explainer (removal order)")
    return figure


def agreement_figure(bags: pd.DataFrame, models: list[str], palette: Palette) -> Figure | None:
    """Left: per cell, mean rank agreement of the members vs the consensus AUROC. Right: per
    bag, consensus AUROC by decile of rank agreement (median and interquartile range)."""
    eligible = bags[np.isfinite(bags["consensus_auroc"]) & np.isfinite(bags["rank_agreement"])]
    if eligible.empty:
        return None
    figure = new_figure(10.0, 4.2)
    left, right = figure.subplots(1, 2)
    runs = eligible.groupby(["cell_id", "model"], sort=False)[
        ["rank_agreement", "consensus_auroc"]].mean().reset_index()
    for model in models:
        part = runs[runs["model"] == model]
        if part.empty:
            continue
        left.scatter(part["rank_agreement"], part["consensus_auroc"], s=18, alpha=0.8,
                     color=palette.model(model), marker=palette.marker(model), label=model)
    left.set_xlabel("member agreement (mean Spearman between members)")
    left.set_ylabel("consensus importance AUROC (truth)")
    left.set_title("per trained ensemble (cell)")
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.legend(fontsize=7, loc="lower right")
    deciles = pd.qcut(eligible["rank_agreement"].rank(method="first"), 10, labels=False)
    grouped = eligible.groupby(deciles)
    centre = grouped["rank_agreement"].median()
    median = grouped["consensus_auroc"].median()
    q1, q3 = grouped["consensus_auroc"].quantile(0.25), grouped["consensus_auroc"].quantile(0.75)
    right.fill_between(centre, q1, q3, color="#88CCEE", alpha=0.5, label="interquartile range")
    right.plot(centre, median, color="#332288", marker="o", label="median")
    right.axhline(0.5, color="grey", lw=0.8, ls=":")
    right.set_xlabel("member agreement of the bag (decile medians)")
    right.set_ylabel("consensus importance AUROC of the bag")
    right.set_title("per bag, by agreement decile")
    right.legend(fontsize=7, loc="lower right")
    return figure
