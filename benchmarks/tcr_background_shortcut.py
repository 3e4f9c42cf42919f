"""Why the `tcr` pool does not use tcrdist3's 100k background receptors.

Classifiers that see only *composition* tell the background file's receptors from the MIRA
receptors: amino-acid letter frequencies of the CDR3 (no order), and the V / J gene usage
that the file also carries. 5-fold cross-validated AUROC on the distinct (V, J, CDR3) rows of
both (background rows whose CDR3 is a MIRA CDR3 dropped, the background subsampled to the
MIRA count). A model trained on bags whose witnesses are MIRA receptors and whose background
is that file could learn this shift instead of epitope specificity, so the pool's background
is receptors of the other MIRA sets. Results: docs/data_sets.md.

    PYTHONPATH=src python benchmarks/tcr_background_shortcut.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import OneHotEncoder

from attnsets.data.pools.receptors import AMINO_ACIDS, MIRA_FILE, mira_directory

BACKGROUND_FILE = "m60_bkgd_test_input.csv"
COLUMNS = ["v_b_gene", "j_b_gene", "cdr3_b_aa"]


def composition(cdr3s: list[str]) -> np.ndarray:
    """(n, 20) letter frequencies of each CDR3."""
    letters = np.frombuffer("".join(cdr3s).encode(), dtype=np.uint8)
    lengths = np.array([len(c) for c in cdr3s])
    rows = np.repeat(np.arange(len(cdr3s)), lengths)
    lookup = np.full(256, -1)
    lookup[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(len(AMINO_ACIDS))
    counts = np.zeros((len(cdr3s), len(AMINO_ACIDS)))
    np.add.at(counts, (rows, lookup[letters]), 1.0)
    return counts / lengths[:, None]


def receptors() -> pd.DataFrame:
    """Distinct (V, J, CDR3) rows with y = 1 for MIRA, 0 for the background file."""
    folder = mira_directory()
    mira = pd.concat([pd.read_csv(path, usecols=COLUMNS) for path in sorted(folder.iterdir())
                      if MIRA_FILE.match(path.name)]).dropna().drop_duplicates()
    background = pd.read_csv(folder / BACKGROUND_FILE, usecols=COLUMNS).dropna().drop_duplicates()
    background = background[~background["cdr3_b_aa"].isin(set(mira["cdr3_b_aa"]))]
    background = background.sample(min(len(mira), len(background)), random_state=0)
    both = pd.concat([mira.assign(y=1), background.assign(y=0)], ignore_index=True)
    return both[both["cdr3_b_aa"].str.fullmatch(f"[{AMINO_ACIDS}]+")]


def main() -> None:
    data = receptors()
    y = data["y"].to_numpy()
    letters = composition(data["cdr3_b_aa"].tolist())
    genes = OneHotEncoder(handle_unknown="ignore", min_frequency=20).fit_transform(
        data[["v_b_gene", "j_b_gene"]]).toarray()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    print(f"{int(y.sum())} MIRA and {int((1 - y).sum())} background (V, J, CDR3) rows")
    for name, x, model in (
            ("CDR3 letter composition, logistic regression", letters,
             LogisticRegression(max_iter=2000)),
            ("CDR3 letter composition, gradient boosting", letters,
             HistGradientBoostingClassifier(random_state=0)),
            ("V / J gene usage, gradient boosting", genes,
             HistGradientBoostingClassifier(random_state=0)),
            ("V / J usage + CDR3 composition, gradient boosting", np.hstack([genes, letters]),
             HistGradientBoostingClassifier(random_state=0))):
        scores = cross_val_score(model, x, y, cv=folds, scoring="roc_auc")
        print(f"{name}: AUROC {scores.mean():.3f} (folds {scores.min():.3f}-{scores.max():.3f})",
              flush=True)


if __name__ == "__main__":
    main()
