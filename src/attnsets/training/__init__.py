"""Training stage: fit one model, fit an ensemble in one vectorised pass, save and load them."""

from attnsets.training.checkpoint import (
    load_ensemble,
    load_model,
    read_checkpoint_meta,
    save_ensemble,
    save_model,
)
from attnsets.training.ensemble import Ensemble, EnsembleResult, fit_ensemble
from attnsets.training.fit import (
    EpochStats,
    FitResult,
    History,
    PaddedSplit,
    TrainSpec,
    class_weight_vector,
    evaluate,
    fit,
    weighted_cross_entropy,
)

__all__ = [
    "Ensemble", "EnsembleResult", "EpochStats", "FitResult", "History", "PaddedSplit",
    "TrainSpec", "class_weight_vector", "evaluate", "fit", "fit_ensemble", "load_ensemble",
    "load_model", "read_checkpoint_meta", "save_ensemble", "save_model",
    "weighted_cross_entropy",
]
