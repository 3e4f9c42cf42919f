"""The one formatter of a study cell's display label: "dataset x model seed r [variant]"
(the runner's progress and failures, MLflow run names), or "dataset [variant]" for the
dataset column of the report (cells pooled over models and replicates)."""

from __future__ import annotations


def cell_label(dataset: str, model: str | None = None, replicate: int | None = None,
               variant: str = "") -> str:
    """"dataset x model seed r [variant]"; without `model`, "dataset [variant]"."""
    text = dataset if model is None else f"{dataset} x {model} seed {replicate}"
    return f"{text} [{variant}]" if variant else text
