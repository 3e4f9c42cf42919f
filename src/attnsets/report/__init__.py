"""Report stage: a results store -> a self-contained report.html with figures (PNG + SVG) and
tables (CSV + Markdown). See docs/report.md for what each figure shows and how to read it."""

from attnsets.report.build import write_report
from attnsets.report.collect import StudyView, load_study, open_results

# load_study: the name of open_results before issue 21 (kept for one release).
__all__ = ["StudyView", "load_study", "open_results", "write_report"]
