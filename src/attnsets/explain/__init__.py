"""Explainer stage: per-instance importance scores for set models, and deletion curves.

``explain(model, batch, method, target=None, **options) -> (B, N)`` float32 torch scores, 0 at
padding. Methods live in the EXPLAINERS registry; importing this package registers the built-ins.
"""

from attnsets.explain import attention, gradients, milli, perturbation  # noqa: F401  (registers)
from attnsets.explain.base import (
    ALIASES,
    EXPLAINERS,
    ExplainContext,
    Explainer,
    available_methods,
    explain,
    explain_ensemble,
    instance_uniforms,
    register_explainer,
)
from attnsets.explain.deletion import (
    DeletionCurves,
    deletion_curve,
    deletion_curves,
    random_deletion_curve,
)

__all__ = [
    "ALIASES", "EXPLAINERS", "DeletionCurves", "ExplainContext", "Explainer", "available_methods",
    "deletion_curve", "deletion_curves", "explain", "explain_ensemble", "instance_uniforms",
    "random_deletion_curve", "register_explainer",
]
