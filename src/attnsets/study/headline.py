"""The headline table: per dataset (rule) x model, the answer in five numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

HEADLINE_COLUMNS = {
    "bag_accuracy": "headline.bag_accuracy",
    "attention_auroc": "headline.attention.auroc",
    "silent_rate": "headline.attention.silent_rate",
    "ensemble_auroc": "headline.attention.ensemble_auroc",
    "ensemble_gain": "headline.attention.ensemble_gain",
}


def headline_table(frame: pd.DataFrame, method: str = "attention") -> pd.DataFrame:
    """One row per (dataset, rule, model): means over replicate seeds of bag accuracy, the
    members' mean importance AUROC of `method`, the share of members that fail silently, the
    ensemble's AUROC and its gain over a single member; `cells` counts finished cells."""
    done = frame[frame["status"] == "done"] if "status" in frame else frame
    if done.empty:
        return pd.DataFrame(columns=["dataset", "rule", "model", "cells", *HEADLINE_COLUMNS])
    columns = {name: col.replace("attention", method, 1) if name != "bag_accuracy" else col
               for name, col in HEADLINE_COLUMNS.items()}
    data = pd.DataFrame({"dataset": done["dataset"], "rule": done["rule"], "model": done["model"]})
    for name, col in columns.items():
        data[name] = pd.to_numeric(done[col], errors="coerce") if col in done else np.nan
    grouped = data.groupby(["dataset", "rule", "model"], sort=False)
    table = grouped.mean(numeric_only=True)
    table.insert(0, "cells", grouped.size())
    return table.reset_index().sort_values(["dataset", "model"], ignore_index=True)
