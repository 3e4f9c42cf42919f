"""Is the label-free reliability signal of `explain-data` trustworthy on real cells?

Bags of real PBMCs (scanpy's pbmc68k_reduced, the `anndata` pool, 20 PCs) are labelled by the
presence of one cell type. `explain_own_data` gets them with the instance truth withheld
(concepts and evidence zeroed: it sees features and bag labels only) and returns, per test bag,
the members' rank agreement. Each member also gets a label-free score per bag: its mean
Spearman correlation with the other members (its agreement with the rest). Both are then
compared with the truth the explainer never saw: the per-bag importance AUROC of the consensus
and of each member against the cells of the named type.

Reported: Spearman correlations (across bags; across members; across member x bag pairs) with
95% bootstrap intervals (bags resampled within each ensemble run; members resampled for the
member level). Results: docs/own_data.md, "On real cells".

    PYTHONPATH=src python benchmarks/label_free_pbmc.py [--seeds 0 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

from attnsets.data import DatasetSpec, make_dataset
from attnsets.data.generate import SetDataset
from attnsets.metrics import per_bag_auroc
from attnsets.models import ModelSpec
from attnsets.own_data import explain_own_data

#: A common type, a rare one, and two T-cell types that overlap other T cells in PCA space (so
#: that explanation quality varies between members and bags).
CELL_TYPES = ("CD19+ B", "CD56+ NK", "CD4+/CD25 T Reg", "CD8+ Cytotoxic T")
#: attention finds separable types almost perfectly; transformer_cls is the pooling that fails
#: silently on them (issue 23), so together they span good and bad explanations.
POOLINGS = ("attention", "transformer_cls")
TRAINING = {"epochs": 30, "batch_size": 16, "lr": 0.002, "weight_decay": 0.0001, "patience": 5}
BOOTSTRAP = 1000


def pbmc_dataset(cell_type: str, seed: int) -> SetDataset:
    return make_dataset(DatasetSpec.from_dict({
        "pool": {"name": "anndata", "source": "pbmc68k_reduced", "obs": "bulk_labels",
                 "n_components": 20},
        "rule": {"name": "presence", "key": cell_type},
        "bags": {"train": 300, "val": 100, "test": 100},
        "bag_size": {"kind": "normal", "mean": 20, "sd": 4, "min": 6},
        "witnesses": {"count": [1, 4]}, "seed": seed}))


def withhold_truth(dataset: SetDataset) -> SetDataset:
    """The same bags with concepts, evidence and source rows removed (all zero)."""
    splits = {name: dataclasses.replace(split, concepts=np.zeros_like(split.concepts),
                                        evidence=np.zeros_like(split.evidence),
                                        source_index=None)
              for name, split in dataset.splits.items()}
    return dataclasses.replace(dataset, splits=splits, concept_names=[], metadata={})


def padded_evidence(split, width: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(B, width) evidence of each instance for its bag's own label, 0 at padding."""
    out = np.zeros((len(split), width), dtype=np.float32)
    for b, bag in enumerate(split):
        out[b, :len(bag)] = bag.evidence_for()
    return out


def member_vs_rest(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K, B): member k's mean Spearman correlation with the other members in bag b."""
    n_members, n_bags, _ = scores.shape
    out = np.full((n_members, n_bags), np.nan)
    for b in range(n_bags):
        ranks = np.stack([rankdata(s[mask[b]]) for s in scores[:, b]])
        if ranks.shape[1] < 3 or np.any(ranks.std(axis=1) == 0):
            continue
        corr = np.corrcoef(ranks)
        out[:, b] = (corr.sum(axis=1) - 1.0) / (n_members - 1)
    return out


def one_run(pooling: str, cell_type: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-bag frame, per-member x bag frame) of one ensemble on held-out test bags."""
    dataset = pbmc_dataset(cell_type, seed)
    result = explain_own_data(withhold_truth(dataset), model=ModelSpec(pooling=pooling,
                              embed_dim=32), members=5, training=TRAINING, seed=seed,
                              splits=("test",))
    mask, scores = result.arrays["test/mask"], result.arrays["test/scores"]
    evidence = padded_evidence(dataset.test, mask.shape[1])
    consensus = per_bag_auroc(result.arrays["test/consensus"], evidence, mask).values
    members = np.stack([per_bag_auroc(s, evidence, mask).values for s in scores])
    run = f"{pooling}/{cell_type}/seed {seed}"
    bags = result.bags[result.bags["split"] == "test"].reset_index(drop=True)
    per_bag = pd.DataFrame({"run": run, "bag": np.arange(len(bags)),
                            "rank_agreement": bags["rank_agreement"].to_numpy(),
                            "consensus_auroc": consensus})
    rest = member_vs_rest(scores, mask)
    k, b = np.meshgrid(np.arange(scores.shape[0]), np.arange(scores.shape[1]), indexing="ij")
    per_member = pd.DataFrame({"run": run, "member": k.ravel(), "bag": b.ravel(),
                               "agreement_with_rest": rest.ravel(),
                               "member_auroc": members.ravel()})
    print(f"{run}: test balanced accuracy {result.metrics['test']['balanced_accuracy']:.3f}, "
          f"consensus AUROC {np.nanmean(consensus):.3f}", flush=True)
    return per_bag.dropna(), per_member.dropna()


def bootstrap_spearman(frame: pd.DataFrame, x: str, y: str, unit: str,
                       rng: np.random.Generator) -> tuple[float, float, float, int]:
    """(rho, 2.5%, 97.5%, n): resampling `unit` groups (rows within each run)."""
    rho = float(spearmanr(frame[x], frame[y]).statistic)
    groups = [g for _, g in frame.groupby(["run"] if unit == "row" else ["run", unit])]
    draws = []
    for _ in range(BOOTSTRAP):
        if unit == "row":
            sample = pd.concat([g.sample(len(g), replace=True, random_state=rng.integers(1 << 31))
                                for g in groups])
        else:
            picked = rng.integers(0, len(groups), size=len(groups))
            sample = pd.concat([groups[i] for i in picked])
        with warnings.catch_warnings():  # a resample with constant truth has no correlation
            warnings.simplefilter("ignore")
            draws.append(spearmanr(sample[x], sample[y]).statistic)
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return rho, float(low), float(high), len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cell-types", nargs="+", default=list(CELL_TYPES))
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS))
    parser.add_argument("--out", type=Path, default=None, help="write the frames as CSV here")
    args = parser.parse_args()
    bag_frames, member_frames = [], []
    for pooling in args.poolings:
        for cell_type in args.cell_types:
            for seed in args.seeds:
                per_bag, per_member = one_run(pooling, cell_type, seed)
                bag_frames.append(per_bag)
                member_frames.append(per_member)
    bags, pairs = pd.concat(bag_frames), pd.concat(member_frames)
    members = pairs.groupby(["run", "member"], as_index=False)[
        ["agreement_with_rest", "member_auroc"]].mean()
    rng = np.random.default_rng(0)
    rows = [("per bag: rank agreement vs consensus AUROC",
             bootstrap_spearman(bags, "rank_agreement", "consensus_auroc", "row", rng)),
            ("per member x bag: agreement with the rest vs the member's AUROC",
             bootstrap_spearman(pairs, "agreement_with_rest", "member_auroc", "row", rng)),
            ("per member (mean over bags): agreement with the rest vs AUROC",
             bootstrap_spearman(members, "agreement_with_rest", "member_auroc", "member", rng))]
    for name, (rho, low, high, n) in rows:
        print(f"{name}: Spearman {rho:.3f} (95% CI {low:.3f} to {high:.3f}, n = {n})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        bags.to_csv(args.out / "bags.csv", index=False)
        pairs.to_csv(args.out / "member_bags.csv", index=False)


if __name__ == "__main__":
    main()
