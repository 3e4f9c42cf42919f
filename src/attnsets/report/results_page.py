"""docs/results.md from a results store: publishing the page. The report's figures and tables
(attnsets.report.assets, PNG and CSV only) and the findings' Markdown
(attnsets.report.markdown) are written into a staging directory beside the page, then moved
into place. Every number on the page is computed from the store, so the page is regenerated,
never edited by hand."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from attnsets.errors import SpecError
from attnsets.report.arrays import StoredArrays
from attnsets.report.assets import FIGURE_DIR, PAGE_FORMATS, TABLE_DIR, write_assets
from attnsets.report.collect import StudyView, open_results
from attnsets.report.markdown import render_markdown

Progress = Callable[[str], None]


def _render(study: StudyView, staging: Path, assets_name: str, command: str,
            tell: Progress) -> str:
    """The page's text; its assets under `staging`/assets."""
    assets = staging / "assets"
    (assets / FIGURE_DIR).mkdir(parents=True)
    (assets / TABLE_DIR).mkdir(parents=True)
    with StoredArrays(study.directory) as arrays:
        tell("report figures and tables")
        written = write_assets(study, assets, arrays, lambda step: tell(f"report: {step}"),
                               PAGE_FORMATS)
        return render_markdown(study, assets, assets_name, written.figure_names, arrays,
                               command, tell)


def write_results_page(results_dir: str | Path, out: str | Path, *,
                       command: str = "make results", progress: Progress | None = None) -> Path:
    """Write `out` (Markdown) and its assets directory (`out` without suffix: figures/ and
    tables/) from the study in `results_dir`. Atomic: a failure leaves the old page in place.
    Raises SpecError when the store holds no finished cell."""
    tell = progress or (lambda _message: None)
    study = open_results(results_dir)
    if not study.done:
        raise SpecError("results_dir", str(results_dir), "a study with at least one finished cell")
    page = Path(out)
    if page.suffix != ".md":
        raise SpecError("out", str(page), "a Markdown file path ending in .md")
    assets = page.with_suffix("")
    page.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".results-staging-", dir=page.parent))
    try:
        text = _render(study, staging, assets.name, command, tell)
        (staging / "page.md").write_text(text, encoding="utf-8")
        if assets.exists():
            shutil.rmtree(assets)
        os.replace(staging / "assets", assets)
        os.replace(staging / "page.md", page)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tell("done")
    return page
