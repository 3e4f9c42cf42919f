"""Figure 4: example bags, one figure per modality in the study.

The test split is regenerated from the cell's dataset spec (same spec => bit-identical bags)
and checked against the concepts and mask stored with the scores, so the instances drawn are
exactly the ones that were scored. Cell, members and bags are chosen from the numbers:
  cell:    prefers the study's headline explainer, then a cell with a silently failing member,
           then the largest AUROC gap between its best and worst member;
  members: "good" = highest importance AUROC; "bad" = the silent failure with the lowest AUROC,
           else the member with the lowest AUROC;
  bags:    test bags with witnesses and non-witnesses where the two members' per-bag AUROCs
           differ most (bags small enough to draw whole are preferred).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from numpy.lib.stride_tricks import sliding_window_view

from attnsets.assessment import ArrayKey, explained_bags
from attnsets.data.bags import BagSplit
from attnsets.metrics import normalise_per_bag, per_bag_auroc
from attnsets.report.arrays import StoredArrays
from attnsets.report.collect import BASELINE_METHODS, CellView, StudyView
from attnsets.report.style import (
    OTHER_COLOUR,
    SCORE_CMAP,
    WITNESS_COLOUR,
    fitted_legend,
    new_figure,
)

#: Most instances drawn for one image / sequence bag (larger bags show the most relevant ones).
MAX_IMAGES = 12
MAX_SEQUENCES = 16
#: Most bags pooled into the PCA scatter of vector data.
MAX_VECTOR_BAGS = 30
#: A bag's scores whose spread (max - min) is below this share of their mean are called
#: nearly uniform in the image figure's titles.
NEAR_UNIFORM = 0.1
DECOY_COLOUR = "#56B4E9"
SILENT = "silent failure"
TIED = "same AUROC as the best"
KIND_TITLES = {"image": "image", "sequence": "sequence", "vector": "vector (gaussian / table)"}


@dataclass
class ExampleChoice:
    """A cell and the members to contrast in it (bad is None for a one-member cell)."""

    cell: CellView
    method: str
    good: int
    bad: int | None
    bad_kind: str

    def member_text(self, k: int) -> str:
        seeds = self.cell.seeds
        return f"member {k} (seed {seeds[k]})" if k < len(seeds) else f"member {k}"


@dataclass
class Example:
    kind: str
    figure: Figure
    caption: str


def _member_values(cell: CellView, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(importance, bag score, silent) per member of `cell` for `method`."""
    result = cell.assessment.explainers[method]
    criteria = cell.criteria
    importance = np.array([r.get(criteria.importance_metric, math.nan) for r in result.members],
                          dtype=np.float64)
    bag = np.array([b.value(criteria.bag_metric) for b in cell.assessment.member_bag],
                   dtype=np.float64)[:len(importance)]
    silent = np.array(result.silent or [False] * len(importance), dtype=bool)
    return importance, bag, silent


def choose_members(cell: CellView, method: str) -> ExampleChoice | None:
    importance, bag, silent = _member_values(cell, method)
    if importance.size == 0 or np.isnan(importance).all():
        return None
    ranked = np.where(np.isnan(importance), -np.inf, importance)
    good = int(np.lexsort((-np.nan_to_num(bag, nan=-1.0), -ranked))[0])
    if importance.size == 1:
        return ExampleChoice(cell, method, good, None, "")
    others = np.delete(np.arange(importance.size), good)
    silent_others = others[silent[others]]
    pool = silent_others if silent_others.size else others
    bad = int(pool[np.argmin(np.where(np.isnan(importance[pool]), np.inf, importance[pool]))])
    if silent_others.size:
        kind = SILENT
    elif importance[bad] == importance[good]:
        kind = TIED
    else:
        kind = "lowest-AUROC member"
    return ExampleChoice(cell, method, good, bad, kind)


def choose_example(study: StudyView, cells: list[CellView]) -> ExampleChoice | None:
    """The most telling cell among `cells` (see the module docstring)."""
    best: tuple[tuple[Any, ...], ExampleChoice] | None = None
    for cell in cells:
        usable = [m for m in study.explainers if m in cell.methods]
        preferred = [m for m in usable if m == study.method] or \
            [m for m in usable if m not in BASELINE_METHODS]
        if not preferred:
            continue
        choice = choose_members(cell, preferred[0])
        if choice is None:
            continue
        importance, bag, _ = _member_values(cell, choice.method)
        gap = importance[choice.good] - (importance[choice.bad] if choice.bad is not None else 0)
        key = (choice.method == study.method, choice.bad_kind == SILENT,
               float(np.nan_to_num(gap)), float(np.nan_to_num(np.nanmax(bag), nan=0.0)))
        if best is None or key > best[0]:
            best = (key, choice)
    return best[1] if best else None


def regenerate_test_split(cell: CellView, arrays: dict[str, np.ndarray]) -> tuple[BagSplit, Any]:
    """(test split, pool) rebuilt from the cell's dataset spec; ValueError when it does not
    match the stored arrays (e.g. a pool file changed since the study ran)."""
    from attnsets.data import make_dataset
    from attnsets.data.generate import build_pool

    spec = cell.cell.run.dataset
    if spec is None:
        raise ValueError("the cell holds no dataset spec")
    split = make_dataset(spec).test
    mask = arrays["mask"]
    same = (len(split) == mask.shape[0] and np.array_equal(mask.sum(axis=1), split.sizes)
            and np.array_equal(arrays["labels"], split.labels)
            and np.array_equal(arrays["concepts"][mask], split.concepts))
    if not same:
        raise ValueError("the regenerated test split differs from the stored one")
    return split, build_pool(spec)


def _bag_order(choice: ExampleChoice, arrays: dict[str, np.ndarray], limit: int | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bag indices best first, per-bag AUROC good, per-bag AUROC bad) over eligible bags."""
    scores = arrays[ArrayKey.scores(choice.method)].astype(np.float64)
    mask, evidence = arrays[ArrayKey.MASK], arrays[ArrayKey.EVIDENCE]
    good = per_bag_auroc(scores[choice.good], evidence, mask).values
    bad = per_bag_auroc(scores[choice.bad], evidence, mask).values if choice.bad is not None \
        else np.zeros_like(good)
    gap = good - bad
    # A bag a budget skipped holds zeros, not scores: never an example.
    eligible = ~np.isnan(gap) & explained_bags(arrays, choice.method)
    if limit is not None and (eligible & (mask.sum(axis=1) <= limit)).any():
        eligible &= mask.sum(axis=1) <= limit
    order = np.argsort(-np.where(eligible, gap, -np.inf), kind="stable")
    return order[: int(eligible.sum())], good, bad


def _shown_instances(witness: np.ndarray, good: np.ndarray, bad: np.ndarray,
                     limit: int) -> np.ndarray:
    """Indices (in bag order) of at most `limit` instances: witnesses and the highest-scored
    instances of either member first."""
    n = len(witness)
    if n <= limit:
        return np.arange(n)
    spread = normalise_per_bag(np.stack([good, bad]), method="rank")
    priority = 2.0 * witness + spread.max(axis=0)
    return np.sort(np.argsort(-priority, kind="stable")[:limit])


def _sums_to_one(scores: np.ndarray) -> bool:
    """Attention-like scores (non-negative, summing to 1 over the bag) get a uniform line."""
    return bool((scores >= 0).all() and abs(float(scores.sum()) - 1.0) < 1e-3)


def _raw_text(value: float) -> str:
    """A raw score short enough to sit on a bar (3 significant digits)."""
    return f"{value:.3g}"


def _raw_range(scores: np.ndarray, n: int) -> str:
    """The raw score range of a bag, with the uniform weight 1/n when the scores are weights."""
    low, high = float(scores.min()), float(scores.max())
    text = f"raw scores {_raw_text(low)} to {_raw_text(high)}"
    if _sums_to_one(scores):
        text += f" (uniform weight 1/{n} = {_raw_text(1.0 / n)})"
    mean = float(np.abs(scores).mean())
    if mean > 0 and high - low < NEAR_UNIFORM * mean:
        # Say so: the scaled bars make any spread look full-height.
        text += f": nearly uniform, spread {(high - low) / mean:.0%} of the mean"
    return text


def _short_metric(name: str) -> str:
    return {"balanced_accuracy": "bal. acc.", "accuracy": "acc."}.get(name, name.replace("_", " "))


def _member_title(choice: ExampleChoice, k: int, role: str, bag_auroc: float) -> str:
    importance, bag, _ = _member_values(choice.cell, choice.method)
    metric = _short_metric(choice.cell.criteria.bag_metric)
    return (f"{role}: {choice.member_text(k)}\nAUROC on this bag {bag_auroc:.2f}, overall "
            f"{importance[k]:.2f}; bag {metric} {bag[k]:.2f}")


def _roles(choice: ExampleChoice) -> list[tuple[int, str]]:
    """(member, label) of the members drawn, best first."""
    if choice.bad is None:
        return [(choice.good, "only member")]
    if choice.bad_kind == TIED:
        return [(choice.good, "best"), (choice.bad, f"other ({TIED})")]
    return [(choice.good, "good"), (choice.bad, f"bad ({choice.bad_kind})")]


def _suptitle(choice: ExampleChoice, bag: int, label: int, names: list[str] | None) -> str:
    cell = choice.cell
    label_text = names[label] if names and label < len(names) else str(label)
    return (f"{cell.dataset} · {cell.model} · replicate {cell.replicate} · test bag {bag} "
            f"(label {label_text}) · explainer: {choice.method}")


def _pick_bag(choice: ExampleChoice, split: BagSplit, arrays: dict[str, np.ndarray], limit: int
              ) -> tuple[int, Any, int, np.ndarray, np.ndarray, np.ndarray, Any, Any] | None:
    """The example bag for `choice`: (index, bag, size, member scores (K, n), witness (n,) bool,
    indices of the instances to show, good member's AUROC, bad member's AUROC)."""
    order, good_auroc, bad_auroc = _bag_order(choice, arrays, limit)
    if order.size == 0:
        return None
    b = int(order[0])
    bag = split[b]
    n = len(bag)
    scores = arrays[ArrayKey.scores(choice.method)][:, b, :n].astype(np.float64)
    witness = arrays["evidence"][b, :n] > 0
    bad_scores = scores[choice.bad] if choice.bad is not None else scores[choice.good]
    shown = _shown_instances(witness, scores[choice.good], bad_scores, limit)
    return b, bag, n, scores, witness, shown, good_auroc, bad_auroc


# -------------------------------------------------------------------------- images
def _image_figure(choice: ExampleChoice, split: BagSplit, arrays: dict[str, np.ndarray],
                  pool: Any) -> tuple[Figure, str] | None:
    picked = _pick_bag(choice, split, arrays, MAX_IMAGES)
    if picked is None:
        return None
    b, bag, n, scores, witness, shown, good_auroc, bad_auroc = picked
    m = len(shown)
    roles = _roles(choice)
    width = max(7.5, 0.8 * m + 1.8)
    cell_height = min((width - 1.4) / m, 1.3)
    figure = new_figure(width, cell_height + 1.75 * len(roles) + 1.1)
    grid = figure.add_gridspec(1 + len(roles), 1, height_ratios=[cell_height] + [1.75] * len(roles))
    # Bars are min-max scaled within the bag, like the sequence and vector figures: the
    # importance AUROC depends only on the order of the scores, and near-uniform attention
    # (all weights close to 1/n) decides a per-bag AUROC of 1.00 or 0.00 by differences of a
    # few thousandths, which are invisible as raw bar heights on a 0-based axis. The raw
    # values are written on the bars and their range in each member's title.
    scaled = normalise_per_bag(scores, method="minmax")
    ax_img = figure.add_subplot(grid[0])
    images = bag.instances[shown]
    for i, image in enumerate(images):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        ax_img.imshow(pixels, cmap="gray_r", extent=(i - 0.45, i + 0.45, 0, 1), aspect="auto",
                      interpolation="nearest")
        if witness[shown[i]]:
            ax_img.add_patch(Rectangle((i - 0.47, -0.05), 0.94, 1.1, fill=False,
                                       edgecolor=WITNESS_COLOUR, linewidth=2.5))
    ax_img.set_xlim(-0.5, m - 0.5)
    ax_img.set_ylim(-0.08, 1.08)
    ax_img.axis("off")
    names = list(getattr(pool, "concept_names", []))
    colours = np.where(witness[shown], WITNESS_COLOUR, OTHER_COLOUR)
    for r, (k, role) in enumerate(roles):
        ax = figure.add_subplot(grid[1 + r])
        bag_value = (good_auroc if k == choice.good else bad_auroc)[b]
        # The edge keeps a zero-height bar (the bag's lowest score) visible as a coloured line.
        bars = ax.bar(np.arange(m), scaled[k, shown], width=0.7, color=colours,
                      edgecolor=colours, linewidth=1.5)
        ax.bar_label(bars, labels=[_raw_text(v) for v in scores[k, shown]], fontsize=7.5,
                     padding=2)
        ax.set_xlim(-0.5, m - 0.5)
        ax.set_ylim(0.0, 1.22)  # room for the value labels above the tallest bar
        ax.set_yticks([0.0, 0.5, 1.0], ["min", "", "max"])
        ax.set_ylabel(f"{choice.method}\n(min–max in bag)")
        title = _member_title(choice, k, role, bag_value) + "\n" + _raw_range(scores[k], n)
        ax.set_title(title, loc="left", fontsize=9)
        ax.grid(axis="x", visible=False)
        concepts = bag.concepts[shown]
        labels = [names[c] if c < len(names) else str(c) for c in concepts.tolist()]
        ax.set_xticks(np.arange(m), labels if r == len(roles) - 1 else [])
    ax.set_xlabel("concept of each instance (witnesses outlined above, orange bars); "
                  "numbers on the bars: raw scores")
    figure.suptitle(_suptitle(choice, b, int(bag.label), names), fontsize=10)
    handles = [Patch(color=WITNESS_COLOUR, label="witness (supports the label)"),
               Patch(color=OTHER_COLOUR, label="other instance")]
    fitted_legend(figure, handles)
    shown_text = f"{m} of {n} instances shown" if m < n else f"all {n} instances"
    return figure, shown_text


# -------------------------------------------------------------------------- sequences
def _motif_window(tokens: np.ndarray, motif: np.ndarray, max_mismatches: int) -> int | None:
    """Start of the first window of `tokens` (zero-padded) within `max_mismatches` of `motif`."""
    length = int((tokens != 0).sum())
    if length < len(motif):
        return None
    windows = sliding_window_view(tokens[:length], len(motif))
    hits = np.flatnonzero((windows != motif[None, :]).sum(axis=1) <= max_mismatches)
    return int(hits[0]) if hits.size else None


def _sequence_text(ax_text: Axes, tokens: np.ndarray, bag: Any, shown: np.ndarray,
                   witness: np.ndarray, pool: Any, longest: int) -> None:
    """The shown sequences as letters, one per row, each implanted motif highlighted
    (witness or decoy colour); tokens: (m, L) of the shown instances."""
    from attnsets.data.pools.sequences import decode

    m = len(shown)
    motifs = list(getattr(pool, "motif_tokens", []))
    max_mismatches = int(getattr(pool, "max_mismatches", 0))
    for row, tokens_row in enumerate(tokens):
        letters = decode(tokens_row)
        concept = int(bag.concepts[shown[row]])
        if 1 <= concept <= len(motifs):
            motif = np.asarray(motifs[concept - 1], dtype=np.int64)
            start = _motif_window(tokens_row, motif, max_mismatches)
            if start is not None:
                colour = WITNESS_COLOUR if witness[shown[row]] else DECOY_COLOUR
                ax_text.add_patch(Rectangle((start - 0.5, row - 0.42), len(motif), 0.84,
                                            facecolor=colour, alpha=0.45, edgecolor="none"))
        weight = "bold" if witness[shown[row]] else "normal"
        for col, letter in enumerate(letters):
            glyph = ax_text.text(col, row, letter, ha="center", va="center",
                                 family="monospace", fontsize=9, fontweight=weight)
            glyph.set_in_layout(False)  # letters sit inside the axes; measuring each is slow
    ax_text.set_xlim(-0.7, longest - 0.3)
    ax_text.set_ylim(m - 0.5, -0.5)
    ax_text.set_xticks([])
    ax_text.set_yticks(np.arange(m), ["witness" if witness[i] else "" for i in shown])
    ax_text.yaxis.tick_right()
    ax_text.tick_params(axis="y", length=0, labelcolor=WITNESS_COLOUR)
    ax_text.grid(False)
    for side in ("left", "bottom"):
        ax_text.spines[side].set_visible(False)
    ax_text.set_title("sequence (implanted motif highlighted)", fontsize=9)


def _sequence_figure(choice: ExampleChoice, split: BagSplit, arrays: dict[str, np.ndarray],
                     pool: Any) -> tuple[Figure, str] | None:
    picked = _pick_bag(choice, split, arrays, MAX_SEQUENCES)
    if picked is None:
        return None
    b, bag, n, scores, witness, shown, good_auroc, bad_auroc = picked
    m = len(shown)
    roles = _roles(choice)
    normalised = normalise_per_bag(scores, method="minmax")[:, shown]
    tokens = bag.instances[shown]
    longest = max(int((tokens != 0).sum(axis=1).max()), 1)
    text_width = 0.14 * longest + 0.9
    figure = new_figure(text_width + 1.1 * len(roles) + 1.2, 0.3 * m + 2.3)
    grid = figure.add_gridspec(1, len(roles) + 1,
                               width_ratios=[0.55] * len(roles) + [text_width])
    image = None
    for r, (k, role) in enumerate(roles):
        ax = figure.add_subplot(grid[0, r])
        image = ax.imshow(normalised[k][:, None], cmap=SCORE_CMAP, vmin=0, vmax=1, aspect="auto",
                          extent=(-0.5, 0.5, m - 0.5, -0.5))
        bag_value = (good_auroc if k == choice.good else bad_auroc)[b]
        ax.set_title(f"{role.split(' (')[0]}\nAUROC\n{bag_value:.2f}", fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks(np.arange(m), [str(i) for i in shown] if r == 0 else [])
        ax.grid(False)
        if r == 0:
            ax.set_ylabel("instance in bag")
    _sequence_text(figure.add_subplot(grid[0, len(roles)]), tokens, bag, shown, witness, pool,
                   longest)
    if image is not None:
        figure.colorbar(image, ax=figure.axes[: len(roles)], location="bottom", shrink=0.9,
                        label="score (min–max\nwithin bag)")
    figure.suptitle(_suptitle(choice, b, int(bag.label), None), fontsize=10)
    handles = [Patch(color=WITNESS_COLOUR, alpha=0.45, label="motif of a witness"),
               Patch(color=DECOY_COLOUR, alpha=0.45, label="other motif (not a witness)")]
    fitted_legend(figure, handles, loc="outside lower right", max_cols=2)
    shown_text = f"{m} of {n} sequences shown" if m < n else f"all {n} sequences"
    return figure, shown_text


# -------------------------------------------------------------------------- vectors
def _pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) -> ((n, 2) projection, (2,) explained variance ratios)."""
    centred = points - points.mean(axis=0, keepdims=True)
    if centred.shape[1] == 1:
        return np.hstack([centred, np.zeros_like(centred)]), np.array([1.0, 0.0])
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2
    ratio = variance[:2] / max(float(variance.sum()), 1e-12)
    return centred @ vt[:2].T, ratio


def _instance_map(split: BagSplit, pool: Any) -> tuple[np.ndarray, tuple[str, str], str]:
    """((n, 2) coordinates, axis labels, what the map is) for the split's instances: the
    pool's own map of their source rows when it has one (a .h5ad file's X_umap), else a PCA."""
    embedding_2d = getattr(pool, "embedding_2d", None)
    if split.source_index is not None and embedding_2d is not None:
        own = embedding_2d(split.source_index)
        if own is not None:
            return own[0], own[1], f"the data set's own {own[1][0].rsplit(' ', 1)[0]} map"
    points = split.instances.reshape(len(split.instances), -1).astype(np.float64)
    projected, ratio = _pca_2d(points)
    return (projected, (f"PC 1 ({ratio[0]:.0%} of variance)", f"PC 2 ({ratio[1]:.0%} of "
                        "variance)"), "PCA of the test instances")


def _vector_figure(choice: ExampleChoice, split: BagSplit, arrays: dict[str, np.ndarray],
                   pool: Any) -> tuple[Figure, str] | None:
    order, good_auroc, bad_auroc = _bag_order(choice, arrays, None)
    if order.size == 0:
        return None
    bags = np.sort(order[:MAX_VECTOR_BAGS])
    mask = arrays["mask"][bags]
    scores = arrays[ArrayKey.scores(choice.method)][:, bags].astype(np.float64)
    normalised = np.stack([normalise_per_bag(s, mask, method="minmax") for s in scores])
    witness = (arrays["evidence"][bags] > 0)[mask]
    subset = split.subset(bags)
    projected, (x_label, y_label), map_name = _instance_map(subset, pool)
    roles = _roles(choice)
    figure = new_figure(3.4 * (1 + len(roles)) + 0.8, 4.1)
    axes: list[Axes] = figure.subplots(1, 1 + len(roles), sharex=True, sharey=True).tolist()
    truth = axes[0]
    truth.scatter(*projected[~witness].T, s=12, color=OTHER_COLOUR, label="other instance",
                  linewidth=0)
    truth.scatter(*projected[witness].T, s=22, color=WITNESS_COLOUR, label="witness",
                  edgecolor="white", linewidth=0.4)
    truth.set_title(f"ground truth\n{int(witness.sum())} witnesses in {len(bags)} test bags\n",
                    fontsize=9)
    truth.legend(loc="best", fontsize=8)
    scatter = None
    for ax, (k, role) in zip(axes[1:], roles, strict=True):
        colour = normalised[k][mask]
        drawing = np.argsort(colour, kind="stable")  # high scores on top
        scatter = ax.scatter(projected[drawing, 0], projected[drawing, 1], c=colour[drawing],
                             cmap=SCORE_CMAP, vmin=0, vmax=1, s=10 + 30 * colour[drawing],
                             linewidth=0)
        per_bag = (good_auroc if k == choice.good else bad_auroc)[bags]
        _, bag_score, _ = _member_values(choice.cell, choice.method)
        metric = _short_metric(choice.cell.criteria.bag_metric)
        ax.set_title(f"{role}\n{choice.member_text(k)}: AUROC {np.nanmean(per_bag):.2f} on "
                     f"these bags,\nbag {metric} {bag_score[k]:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xlabel(x_label)
    axes[0].set_ylabel(y_label)
    if scatter is not None:
        figure.colorbar(scatter, ax=axes[1:], label=f"{choice.method} score (min–max within bag)",
                        shrink=0.85)
    cell = choice.cell
    figure.suptitle(f"{cell.dataset} · {cell.model} · replicate {cell.replicate} · "
                    f"explainer: {choice.method} · {map_name}", fontsize=10)
    return figure, f"{len(bags)} test bags, {len(projected)} instances ({map_name})"


DRAWERS = {"image": _image_figure, "sequence": _sequence_figure, "vector": _vector_figure}


def _caption(choice: ExampleChoice, shown: str) -> str:
    importance, bag, _ = _member_values(choice.cell, choice.method)
    criteria = choice.cell.criteria
    metric = criteria.bag_metric.replace("_", " ")
    roles = _roles(choice)
    parts = [f"{choice.cell.dataset} × {choice.cell.model}: {shown}."]
    for k, role in roles:
        parts.append(f"{role[0].upper()}{role[1:]}: {choice.member_text(k)}, {choice.method} "
                     f"AUROC {importance[k]:.3f}, bag {metric} {bag[k]:.3f}.")
    parts.append("Chosen from the numbers: the test bag(s) where the two members' per-bag "
                 "AUROCs differ most." if len(roles) > 1 else "")
    return " ".join(p for p in parts if p)


def example_figures(study: StudyView, notes: list[str], arrays: StoredArrays) -> list[Example]:
    """One Example per modality present; every modality that cannot be drawn adds a note.
    `arrays` reads the chosen cells' stored scores."""
    examples: list[Example] = []
    kinds = list(dict.fromkeys(c.kind for c in study.done))
    for kind in kinds:
        cells = [c for c in study.done if c.kind == kind]
        if kind not in DRAWERS:
            notes.append(f"Example bags: no drawing for pools of kind {kind!r} "
                         f"({', '.join(sorted({c.pool for c in cells}))}).")
            continue
        choice = choose_example(study, cells)
        if choice is None:
            notes.append(f"Example bags ({kind}): no cell has per-instance scores of an "
                         "informative explainer.")
            continue
        stored = arrays.of(choice.cell.cell_id)
        if ArrayKey.scores(choice.method) not in stored or ArrayKey.MASK not in stored:
            notes.append(f"Example bags ({kind}): the store holds no score arrays for "
                         f"{choice.cell.dataset} × {choice.cell.model}.")
            continue
        try:
            split, pool = regenerate_test_split(choice.cell, stored)
        except Exception as error:  # noqa: BLE001 - e.g. a pool file that is gone
            notes.append(f"Example bags ({kind}): could not regenerate the test split of "
                         f"{choice.cell.dataset} ({type(error).__name__}: {error}).")
            continue
        drawn = DRAWERS[kind](choice, split, stored, pool)
        if drawn is None:
            notes.append(f"Example bags ({kind}): no test bag of {choice.cell.dataset} holds "
                         "both witnesses and other instances.")
            continue
        figure, shown = drawn
        examples.append(Example(kind, figure, _caption(choice, shown)))
    if study.done:
        absent = [k for k in DRAWERS if k not in kinds]
        if absent:
            notes.append("Example bags: the study has no "
                         + " or ".join(KIND_TITLES[k] for k in absent)
                         + " datasets, so those example figures are absent.")
    return examples


__all__ = ["Example", "ExampleChoice", "choose_example", "choose_members", "example_figures",
           "regenerate_test_split"]
