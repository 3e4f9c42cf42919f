"""Metrics stage (numpy only): bag-level quality, instance importance against ground-truth
witnesses, deletion faithfulness, silent-failure checks and ensembles of explanations.

See docs/metrics.md for formulas, chance levels and how undefined cases are reported.
"""

from attnsets.metrics.bag import BAG_SCORES, bag_metrics, check_bag_inputs
from attnsets.metrics.ensemble import METHODS as COMBINE_METHODS
from attnsets.metrics.ensemble import combine_probs, combine_scores, ensemble_size_curve
from attnsets.metrics.faithfulness import aopc, aopc_per_bag, deletion_order, removal_mask
from attnsets.metrics.importance import (
    IMPORTANCE_SCORES,
    NORMALISATIONS,
    ConfidenceInterval,
    MetricDict,
    PerBagResult,
    PooledResult,
    auprc2,
    auroc2,
    average_ranks,
    bootstrap_ci,
    check_importance_inputs,
    concentration,
    importance_report,
    ndcg_at_k,
    normalise_per_bag,
    per_bag_auprc,
    per_bag_auroc,
    pooled_auprc,
    pooled_auprc2,
    pooled_auroc,
    pooled_auroc2,
    precision_at_k,
    rank_auroc,
)
from attnsets.metrics.silent import (
    SilentFailureCriteria,
    UnitTestResult,
    is_silent_failure,
    misleading_bags,
    unit_test_flag,
)

__all__ = [
    "BAG_SCORES", "COMBINE_METHODS", "IMPORTANCE_SCORES", "NORMALISATIONS", "ConfidenceInterval",
    "MetricDict", "PerBagResult", "PooledResult",
    "SilentFailureCriteria", "UnitTestResult", "aopc", "aopc_per_bag", "auprc2", "auroc2",
    "average_ranks", "bag_metrics", "bootstrap_ci", "check_bag_inputs", "check_importance_inputs",
    "combine_probs", "combine_scores", "concentration", "deletion_order", "ensemble_size_curve",
    "importance_report", "is_silent_failure", "misleading_bags", "ndcg_at_k", "normalise_per_bag",
    "per_bag_auprc", "per_bag_auroc", "pooled_auprc", "pooled_auprc2", "pooled_auroc",
    "pooled_auroc2", "precision_at_k", "rank_auroc", "removal_mask", "unit_test_flag",
]
