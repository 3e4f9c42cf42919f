"""The report stage on a small REAL study (trained once per session): files, tables checked
against the store, figure consistency, partial stores, atomic writes and a headless browser."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D

from attnsets.errors import SpecError
from attnsets.metrics import per_bag_auroc
from attnsets.report import load_study, write_report
from attnsets.report.build import FIGURE_DIR, REPORT_NAME, TABLE_DIR
from attnsets.report.examples import (
    _image_figure,
    _pick_bag,
    choose_example,
    regenerate_test_split,
)
from attnsets.report.figures import distribution_figure, silent_failure_figure
from attnsets.report.style import Palette, fitted_legend, new_figure, report_style
from attnsets.report.summary import summary_points
from attnsets.report.tables import (
    CELL_COLUMNS,
    CURVE_COLUMNS,
    HEADLINE_COLUMNS,
    RANKING_COLUMNS,
    explainer_ranking,
    fmt,
    headline_table,
    to_markdown,
)
from attnsets.study.config import validate_config
from attnsets.study.runner import run_study
from attnsets.study.store import ResultsStore

CHROMIUM = Path("/usr/bin/chromium")
SMALL_BAGS = {"kind": "normal", "mean": 6, "sd": 1, "min": 4}
RAW = {
    "study": {"name": "report-test", "seeds": [0], "members": 2,
              "explainers": ["attention", "gradient", "random"], "bootstrap": 10,
              "curve_subsets": 3},
    "training": {"epochs": 2, "batch_size": 16},
    # Lenient thresholds: two epochs of training rarely reach 0.9, and the silent-failure
    # paths of the report must be exercised by real members.
    "thresholds": {"min_bag_score": 0.5, "max_importance": 0.8},
    "datasets": [
        {"name": "vectors", "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4},
         "rule": {"name": "presence", "key": 1}, "bag_size": SMALL_BAGS,
         "bags": {"train": 24, "val": 12, "test": 12}},
        {"name": "digits", "pool": {"name": "digits"},
         "rule": {"name": "poison", "key": 9, "poison": 0}, "bag_size": SMALL_BAGS,
         "bags": {"train": 24, "val": 12, "test": 12}},
        {"name": "motifs", "pool": {"name": "sequences", "n_motifs": 2, "motif_length": 4,
                                     "min_length": 10, "max_length": 20},
         "rule": {"name": "presence", "key": 1}, "bag_size": SMALL_BAGS,
         "bags": {"train": 24, "val": 12, "test": 12}},
    ],
    "models": [{"name": "att", "pooling": "attention", "embed_dim": 8},
               {"name": "mean", "pooling": "mean", "embed_dim": 8}],
}
ALL_FIGURES = ("silent_failures", "importance_distribution", "ensemble_size", "example_image",
               "example_sequence", "example_vector", "deletion_curves")
TABLES = {"headline": HEADLINE_COLUMNS, "explainer_ranking": RANKING_COLUMNS,
          "ensemble_curve": CURVE_COLUMNS, "cells": CELL_COLUMNS}
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report_study")
    summary = run_study(validate_config(RAW), out, workers=1, show_progress=False)
    assert summary.done == 6 and summary.failed == 0, summary.failures
    return out


@pytest.fixture(scope="session")
def full_report(study_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, list[str]]:
    messages: list[str] = []
    out = tmp_path_factory.mktemp("full_report")
    path = write_report(study_dir, out, progress=messages.append)
    return path, messages


def copy_cells(source: Path, target: Path, keep) -> Path:  # type: ignore[no-untyped-def]
    """A new store holding the real records of `source` for which keep(record) is true."""
    store = ResultsStore(source)
    try:
        with ResultsStore.open_for_run(target) as out:
            for rec in store.records():
                if keep(rec):
                    if rec.assessment is not None:
                        rec.assessment.arrays = store.arrays(rec.cell_id)
                    out.write(rec)
    finally:
        store.close()
    shutil.copy(source / "config.json", target / "config.json")
    return target


@pytest.fixture(scope="session")
def partial_dir(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the mean-pooling cells of the vector dataset: no attention, one modality."""
    return copy_cells(study_dir, tmp_path_factory.mktemp("partial"),
                      lambda r: r.cell.model_name == "mean" and r.cell.dataset_name == "vectors")


@pytest.fixture(scope="session")
def partial_report(partial_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(partial_dir, tmp_path_factory.mktemp("partial_report"))


def read_table(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report.parent / TABLE_DIR / f"{name}.csv")


def distinct_colours(pixels: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3 or 4) float image in [0, 1]."""
    rgb = np.rint(pixels[..., :3] * 255).astype(np.int64).reshape(-1, 3)
    return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def summary_text(html: str) -> str:
    start = html.index('<section id="summary">')
    return html[start:html.index("</section>", start)]


# --------------------------------------------------------------------------- files
def test_every_figure_is_written_as_non_blank_png_and_valid_svg(full_report) -> None:
    report, _ = full_report
    for name in ALL_FIGURES:
        png = report.parent / FIGURE_DIR / f"{name}.png"
        svg = report.parent / FIGURE_DIR / f"{name}.svg"
        assert png.stat().st_size > 5_000, name
        pixels = matplotlib.image.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300, name
        assert float(pixels[..., :3].var()) > 0.0, name
        assert distinct_colours(pixels) > 10, name
        root = ElementTree.parse(svg).getroot()
        assert root.tag.endswith("svg"), name
        assert svg.stat().st_size > 5_000, name
    leftovers = [p for p in report.parent.iterdir() if p.name.startswith(".report-staging")]
    assert leftovers == []


def test_tables_are_csv_and_markdown_with_expected_columns(full_report) -> None:
    report, _ = full_report
    for name, columns in TABLES.items():
        frame = read_table(report, name)
        assert list(frame.columns) == columns, name
        markdown = (report.parent / TABLE_DIR / f"{name}.md").read_text().splitlines()
        header = next(line for line in markdown if line.startswith("| "))
        assert [c.strip() for c in header.strip("|").split("|")] == columns
        body = [line for line in markdown if line.startswith("| ")][1:]
        assert len(body) == len(frame), name
    headline = read_table(report, "headline")
    assert list(zip(headline["dataset"], headline["model"], strict=True)) == [
        (d, m) for d in ("vectors", "digits", "motifs") for m in ("att", "mean")]
    members = read_table(report, "members")
    # cells x members x explainers, minus attention on the mean-pooling cells
    assert len(members) == 3 * 2 * 2 * 3 - 3 * 2


def test_headline_agrees_with_the_raw_store(full_report, study_dir: Path) -> None:
    headline = read_table(full_report[0], "headline").set_index(["dataset", "model"])
    store = ResultsStore(study_dir)
    records = store.done()
    store.close()
    for rec in records:
        key = (rec.cell.dataset_name, rec.cell.model_name)
        row = headline.loc[key]
        assert rec.assessment is not None
        metrics = rec.assessment.to_dict()
        assert row["bag_accuracy"] == pytest.approx(metrics["member_mean"]["bag"]["accuracy"])
        if key[1] == "mean":
            assert math.isnan(row["importance_auroc"])
            assert "does not apply" in row["note"]
            continue
        aurocs = [m["auroc"] for m in metrics["members"]["importance"]["attention"]]
        assert row["importance_auroc"] == pytest.approx(np.mean(aurocs))
        assert row["importance_auroc_ci_low"] <= row["importance_auroc"] \
            <= row["importance_auroc_ci_high"]
        assert row["silent_failures"] == sum(metrics["members"]["silent"]["attention"])
        assert row["ensemble_auroc"] == pytest.approx(metrics["ensemble"]["attention"]["auroc"])
        assert row["ensemble_gain"] == pytest.approx(
            row["ensemble_auroc"] - row["importance_auroc"])
        curve = metrics["curve"]["attention"]
        assert row["p_fail_single"] == pytest.approx(curve[0]["p_fail"])
        assert row["p_fail_ensemble"] == pytest.approx(curve[-1]["p_fail"])
        if key[0] == "digits":  # poison is a shifted-test rule: the unit test ran
            assert row["unit_test_flagged_rate"] == pytest.approx(
                metrics["unit_test"]["flagged_rate"])


def test_explainer_ranking_is_mean_auroc_over_cells(full_report, study_dir: Path) -> None:
    ranking = read_table(full_report[0], "explainer_ranking")
    store = ResultsStore(study_dir)
    records = store.records()
    store.close()
    for row in ranking.itertuples():
        values = [r.assessment.explainers[row.explainer].mean("auroc") for r in records
                  if r.assessment is not None and row.explainer in r.assessment.explainers]
        assert row.cells == len(values)
        assert row.mean_auroc == pytest.approx(np.mean(values))
    assert list(ranking["mean_auroc"]) == sorted(ranking["mean_auroc"], reverse=True)
    assert ranking["rank"].iloc[0] == 1 and set(ranking["explainer"]) == {
        "attention", "gradient", "random"}
    assert dict(zip(ranking["explainer"], ranking["cells"], strict=True))["attention"] == 3


def test_silent_region_count_matches_the_stored_flags(full_report, study_dir: Path) -> None:
    members = read_table(full_report[0], "members")
    inside = (members["bag_score"] >= members["min_bag_score"]) & \
        (members["importance"] <= members["max_importance"])
    assert (inside == members["silent"]).all()
    study = load_study(study_dir)
    palette = Palette.for_names(study.models, study.explainers)
    with report_style():
        figure = silent_failure_figure(study, palette)
    assert figure is not None
    written = sorted(t.get_text() for ax in figure.axes for t in ax.texts
                     if t.get_text().startswith("silent failures"))
    attention = members[members["explainer"] == "attention"]
    expected = sorted(f"silent failures: {int(group['silent'].sum())} of {len(group)}"
                      for _, group in attention.groupby("dataset"))
    assert written == expected


def test_each_model_keeps_its_colour_across_figures(study_dir: Path) -> None:
    study = load_study(study_dir)
    palette = Palette.for_names(study.models, study.explainers)
    assert palette.model("att") != palette.model("mean")
    assert Palette.for_names(study.models, study.explainers) == palette
    with report_style():
        scatter = silent_failure_figure(study, palette)
        boxes = distribution_figure(study, palette)
    assert scatter is not None and boxes is not None

    def colours(figure) -> set[str]:  # type: ignore[no-untyped-def]
        found = set()
        for ax in figure.axes:
            for collection in ax.collections:
                for rgba in collection.get_facecolor():
                    found.add(matplotlib.colors.to_hex(rgba[:3]))
        return found

    model_colours = {palette.model(m).lower() for m in study.models}
    assert colours(scatter) == {palette.model("att").lower()}  # mean has no attention
    assert colours(boxes) == model_colours


def test_examples_draw_the_scored_instances(study_dir: Path) -> None:
    study = load_study(study_dir)
    store = ResultsStore(study_dir)
    try:
        for kind in ("image", "sequence", "vector"):
            choice = choose_example(study, [c for c in study.done if c.kind == kind])
            assert choice is not None and choice.method == "attention"
            attention = choice.cell.assessment.explainers["attention"]
            aurocs = np.array([r["auroc"] for r in attention.members])
            silent = np.array(attention.silent, dtype=bool)
            assert aurocs[choice.good] == aurocs.max()
            others = np.delete(np.arange(len(aurocs)), choice.good)
            if silent[others].any():  # the bad example is the worst silent failure
                assert choice.bad_kind == "silent failure" and silent[choice.bad]
                assert aurocs[choice.bad] == aurocs[others][silent[others]].min()
            else:
                assert aurocs[choice.bad] == aurocs[others].min()
            arrays = store.arrays(choice.cell.cell_id)
            split, _ = regenerate_test_split(choice.cell, arrays)
            assert np.array_equal(split.labels, arrays["labels"])
            arrays["concepts"] = np.where(arrays["mask"], arrays["concepts"] + 1, -1)
            with pytest.raises(ValueError, match="differs"):
                regenerate_test_split(choice.cell, arrays)
    finally:
        store.close()


def test_image_example_bars_show_the_score_order_that_decides_the_bag_auroc(
        study_dir: Path) -> None:
    """Near-uniform attention (every weight about 1/n) gets a per-bag AUROC of 0.00 or 1.00 from
    differences of a few thousandths. Drawn as raw heights on a 0-based axis, such a member's
    bars looked just like the other member's; the bars must show the stored order visibly."""
    study = load_study(study_dir)
    choice = choose_example(study, [c for c in study.done if c.kind == "image"])
    assert choice is not None and choice.bad is not None
    store = ResultsStore(study_dir)
    try:
        arrays = store.arrays(choice.cell.cell_id)
    finally:
        store.close()
    split, pool = regenerate_test_split(choice.cell, arrays)
    key = f"scores/{choice.method}"
    mask, witnesses = arrays["mask"], arrays["evidence"] > 0
    sizes = mask.sum(axis=1, keepdims=True)
    # The bad member: uniform weights, witnesses 0.002 lower (AUROC 0 on every eligible bag),
    # tiny distinct offsets so that no two scores tie.
    offsets = 1e-5 * np.arange(mask.shape[1])[None, :]
    near_uniform = np.where(mask, 1.0 / sizes - 0.002 * witnesses + offsets, 0.0)
    arrays[key] = arrays[key].copy()
    arrays[key][choice.bad] = near_uniform / near_uniform.sum(axis=1, keepdims=True)
    picked = _pick_bag(choice, split, arrays, 12)
    assert picked is not None
    b, _, n, _, witness, shown, good_auroc, bad_auroc = picked
    assert bad_auroc[b] == 0.0 and good_auroc[b] > bad_auroc[b]
    with report_style():
        drawn = _image_figure(choice, split, arrays, pool)
    assert drawn is not None
    bar_axes = [ax for ax in drawn[0].axes if ax.containers]
    assert len(bar_axes) == 2
    heights = []
    for ax, k, bag_auroc in zip(bar_axes, (choice.good, choice.bad),
                                (good_auroc[b], bad_auroc[b]), strict=True):
        drawn_heights = np.array([bar.get_height() for bar in ax.containers[0]])
        stored = arrays[key][k, b, :n].astype(np.float64)
        expected = (stored - stored.min()) / (stored.max() - stored.min())
        np.testing.assert_allclose(drawn_heights, expected[shown], atol=1e-6)
        low, high = ax.get_ylim()
        assert np.ptp(drawn_heights) / (high - low) > 0.5, "score differences not visible"
        if len(shown) == n:  # the drawn heights give the AUROC written above them
            from_bars = per_bag_auroc(drawn_heights[None], witness[shown][None]).values[0]
            assert from_bars == pytest.approx(bag_auroc)
            assert f"AUROC on this bag {bag_auroc:.2f}" in ax.get_title(loc="left")
        heights.append(drawn_heights)
    assert not np.allclose(heights[0], heights[1])
    # The scaled bars would make the near-uniform member look decisive: its title says so.
    assert "nearly uniform" in bar_axes[1].get_title(loc="left")


# --------------------------------------------------------------------------- html
def test_html_is_self_contained_and_states_the_table_numbers(full_report) -> None:
    report, _ = full_report
    html = report.read_text()
    assert not EXTERNAL.search(html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(ALL_FIGURES)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    summary = summary_text(html)
    headline = read_table(report, "headline")
    ranking = read_table(report, "explainer_ranking")
    best = ranking.iloc[0]
    assert f"{best['explainer']} ({fmt(best['mean_auroc'])} over {best['cells']} cells" in summary
    table_values = {fmt(v, c) for frame in (headline, ranking) for c in frame.columns
                    for v in frame[c]}
    numbers = re.findall(r"[+-]?\d+\.\d{3}", summary)
    assert numbers, summary
    assert set(numbers) <= table_values
    assert "6 of 6 cells finished" in summary


def test_summary_follows_the_table(study_dir: Path) -> None:
    study = load_study(study_dir)
    headline, ranking = headline_table(study), explainer_ranking(study)
    text = " ".join(summary_points(study, headline, ranking))
    failing = headline[headline["silent_failures"] > 0]
    for row in failing.itertuples():
        assert (f"{row.dataset} ({int(row.silent_failures)} of {row.members} members, rate "
                f"{fmt(row.silent_rate)})") in text
    if failing.empty:
        assert "No trained member failed silently" in text
    altered = headline.copy()
    altered["silent_failures"] = altered["silent_failures"] * 0
    altered["members_accurate"] = altered["members_accurate"] * 0
    text = " ".join(summary_points(study, altered, ranking))
    assert "No trained member failed silently" in text and "fails silently" not in text
    assert "none of the 6 members reached the bag threshold" in text
    altered.loc[altered["model"] == "att", "members_accurate"] = 1
    text = " ".join(summary_points(study, altered, ranking))
    assert "3 of 6 members reached the bag threshold" in text


def test_progress_reports_each_stage(full_report) -> None:
    _, messages = full_report
    for stage in ("reading results", "tables", "figure: example bags", "report.html", "done"):
        assert stage in messages


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=180, check=False)


#: Appended to a test copy of the report (the report itself has no scripts): writes the
#: viewport width, the page's scroll width and the right edge of every table and figure into
#: the DOM, which --dump-dom prints after the page has been laid out.
LAYOUT_PROBE = """<script>
const boxes = [...document.querySelectorAll("table, figure img")].map((e, i) =>
  [e.id || (e.closest("figure") || {}).id || e.tagName + i, e.getBoundingClientRect().right]);
const probe = document.createElement("pre");
probe.id = "layout-probe";
probe.textContent = JSON.stringify({viewport: document.documentElement.clientWidth,
  scroll: document.documentElement.scrollWidth, boxes});
document.body.appendChild(probe);
</script>"""


def test_report_renders_in_headless_chromium(full_report, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    report, _ = full_report
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
             report.resolve().as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert distinct_colours(pixels) > 20
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.002  # dark text and lines, not all white


def test_tables_and_figures_fit_a_1280_px_window(full_report, tmp_path: Path) -> None:
    """Laid out by chromium at 1280 px: the headline table (and every other table and figure)
    ends inside the viewport and nothing makes the page scroll sideways."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    report, _ = full_report
    probed = report.parent / "probe.html"  # next to the report: same relative links
    probed.write_text(report.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    try:
        result = chromium(tmp_path, "--window-size=1280,2000", "--dump-dom",
                          probed.resolve().as_uri())
    finally:
        probed.unlink()
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, result.stderr[-2000:]
    layout = json.loads(html.unescape(found.group(1)))
    viewport = layout["viewport"]
    assert 1200 <= viewport <= 1280  # the window's width, less a scroll bar
    boxes = dict(layout["boxes"])
    for name, right in boxes.items():
        assert right <= viewport, f"{name} ends at {right:.0f} px, viewport {viewport} px"
    assert layout["scroll"] <= viewport
    assert {"table-headline", "table-ranking", "table-cells"} <= set(boxes)
    assert len([name for name in boxes if name.startswith("fig-")]) == len(ALL_FIGURES)


def test_headline_page_table_has_one_header_style(full_report) -> None:
    page = full_report[0].read_text()
    table = page[page.index('<table id="table-headline">'):]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table[:table.index("</thead>")])
    assert "bag balanced accuracy" in headers and "silent failures" in headers
    assert not [h for h in headers if "_" in h], headers
    assert 'class="scroll"' not in page  # tables fit; no sideways-scrolling boxes


def contrast_on_white(colour: str) -> float:
    """WCAG contrast ratio of `colour` against white (21 = black, 1 = white)."""
    channels = np.array(matplotlib.colors.to_rgb(colour))
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return 1.05 / (float(linear @ [0.2126, 0.7152, 0.0722]) + 0.05)


def test_missing_values_are_marked_readably(study_dir: Path, full_report) -> None:
    study = load_study(study_dir)
    with report_style():
        figure = distribution_figure(study, Palette.for_names(study.models, study.explainers))
    assert figure is not None
    marks = [t for ax in figure.axes for t in ax.texts if t.get_text() == "n/a"]
    assert len(marks) == 3  # attention on the mean-pooling model of each dataset
    for mark in marks:
        assert mark.get_fontsize() >= 9
        assert contrast_on_white(mark.get_color()) >= 7  # WCAG AAA for text
    page = full_report[0].read_text()
    headline = page[page.index('<table id="table-headline">'):]
    headline = headline[:headline.index("</table>")]
    assert headline.count('class="na">n/a</td>') >= 3 * 5  # mean rows: importance columns
    assert ">–<" not in headline


def test_figure_legends_fit_inside_a_narrow_figure() -> None:
    """A one-panel figure (3.9 in) with a legend of two models and two reference lines: a
    legend with one column per entry is wider than the figure and was cut off at both ends."""
    handles = [Line2D([], [], marker="o", linestyle="", label=name) for name in
               ("attention", "gated_attention", "silent-failure region", "chance (0.5)")]
    with report_style():
        figure = new_figure(3.9, 3.5)
        figure.subplots()
        renderer = FigureCanvasAgg(figure).get_renderer()
        one_row = figure.legend(handles=handles, loc="outside lower center", ncols=4)
        assert one_row.get_window_extent(renderer).width > figure.bbox.width  # not vacuous
        one_row.remove()
        legend = fitted_legend(figure, handles, title="model")
        figure.savefig(io.BytesIO(), format="png")  # lay out as the report does
        box = legend.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width


# --------------------------------------------------------------------------- partial stores
def test_missing_results_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="results_dir") as error:
        write_report(tmp_path / "nowhere")
    assert "no such directory" in str(error.value)
    with pytest.raises(SpecError, match="results.sqlite"):
        write_report(tmp_path)


def test_empty_store_reports_that_nothing_ran(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path / "empty"):
        pass
    report = write_report(tmp_path / "empty")
    assert report == tmp_path / "empty" / "report" / REPORT_NAME
    html = report.read_text()
    assert "holds no cells" in html and "Missing or not shown" in html
    assert list(read_table(report, "headline").columns) == HEADLINE_COLUMNS
    assert read_table(report, "headline").empty
    assert not (report.parent / FIGURE_DIR).exists()


def test_only_failed_cells_lists_the_errors(tmp_path: Path) -> None:
    def explode(cell):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"injected failure in {cell.dataset_name}")

    run_study(validate_config(RAW), tmp_path / "failed", run_cell=explode, show_progress=False)
    report = write_report(tmp_path / "failed", tmp_path / "out")
    html = report.read_text()
    assert "0 of 6 cells finished (6 failed)" in html
    assert html.count("injected failure in") == 6 * 2  # missing list + cells table
    assert (read_table(report, "cells")["status"] == "failed").all()
    assert not (report.parent / FIGURE_DIR).exists()


def test_store_without_attention_and_one_modality(partial_report: Path) -> None:
    report = partial_report
    html = report.read_text()
    assert "No attention scores for model(s) mean: does not apply to pooling" in html
    assert "no image or sequence datasets" in html
    assert "the headline explainer is gradient" in html
    headline = read_table(report, "headline")
    assert list(headline["explainer"]) == ["gradient"]
    figures = {p.stem for p in (report.parent / FIGURE_DIR).glob("*.png")}
    assert "example_vector" in figures
    assert not {"example_image", "example_sequence"} & figures


def test_rewrite_drops_stale_files_and_keeps_foreign_ones(full_report, partial_dir: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_report[0].parent, out)
    (out / "my-notes.txt").write_text("mine")
    write_report(partial_dir, out)
    assert not (out / FIGURE_DIR / "example_image.png").exists()
    assert (out / FIGURE_DIR / "example_vector.png").exists()
    assert (out / "my-notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".report-staging")]


def test_a_crash_leaves_the_previous_report_untouched(partial_dir: Path, partial_report: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(partial_report.parent, out)
    report = out / REPORT_NAME
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr("attnsets.report.assets.distribution_figure", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(partial_dir, out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and report in after


# --------------------------------------------------------------------------- formatting
def test_number_format_and_markdown() -> None:
    assert fmt(float("nan")) == "–" and fmt(None) == "–" and fmt(pd.NA) == "–"
    assert fmt(0.12345) == "0.123" and fmt(0.1, "ensemble_gain") == "+0.100"
    assert fmt(-0.05, "ensemble_gain") == "-0.050" and fmt(3.0, "cells") == "3"
    assert fmt(True) == "yes" and fmt("a|b") == "a|b"
    assert fmt(-0.0001) == "0.000" and fmt(-0.0001, "ensemble_gain") == "+0.000"
    frame = pd.DataFrame({"model": ["a|b"], "silent_rate": [0.25]})
    assert to_markdown(frame).splitlines() == [
        "| model | silent_rate |", "|---|---|", "| a\\|b | 0.250 |"]
    assert "(no rows)" in to_markdown(frame.iloc[0:0])
