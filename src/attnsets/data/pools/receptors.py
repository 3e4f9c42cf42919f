"""Real T-cell receptors: CDR3-beta sequences of the 29 SARS-CoV-2 epitope-specific MIRA sets
(Nolan et al. 2020, ImmuneCODE), as bundled in tcrdist3's wheel (``tcrdist/data/covid19/
mira_epitope_<id>_<n>_<peptides>.tcrdist3.csv``, 24,892 rows in all).

Concept = epitope set: concept k's receptors were found specific to set k's peptides; its name
is the set's first peptide (all peptides are in the metadata). A `presence` rule with
``key = "YLQPRTFL"`` labels a bag positive iff it holds a receptor of that set; witnesses are
those receptors, the background is receptors of the other sets. tcrdist3's 100k background
file is not used: classifiers on composition alone tell it from the MIRA receptors (AUROC 0.79
from V / J gene usage, 0.83 with CDR3 letter frequencies added, 0.66-0.70 from the letter
frequencies alone; benchmarks/tcr_background_shortcut.py), a shortcut a model could learn
instead of specificity.

Cleaning: each set keeps its distinct CDR3s (a clone seen in several donors counts once), and
CDR3s found in more than one set are dropped (their truth would be ambiguous): 22,491 distinct
per set, 22,206 kept (`metadata()` has the exact counts). tcrdist3 is located with importlib
and never imported (its dependencies are heavy: ``pip install --no-deps tcrdist3``).

Encoding is the `sequences` pool's: int64 tokens 1..20 over ``ACDEFGHIKLMNPQRSTVWY``, 0 =
padding, instance shape (max_length,), vocab_size 21, so the `seq_cnn` encoder reads it.
Splits are FinitePool's (stratified by set, disjoint; bags draw with replacement).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from attnsets.data.pools.base import POOLS, FinitePool
from attnsets.data.pools.sequences import AMINO_ACIDS, N_LETTERS, decode, encode
from attnsets.errors import SpecError

SOURCES = ("mira",)
MIRA_FILE = re.compile(r"^mira_epitope_(\d+)_(\d+)_([A-Z_]+)\.tcrdist3\.csv$")
CDR3_COLUMN = "cdr3_b_aa"


def mira_directory() -> Path:
    """tcrdist3's covid19 data folder, found without importing tcrdist."""
    spec = importlib.util.find_spec("tcrdist")
    if spec is None or spec.origin is None:
        raise SpecError("source", "mira", "an installed tcrdist3 package, whose wheel holds the "
                        "MIRA sets (pip install --no-deps tcrdist3; `make test` does it)")
    folder = Path(spec.origin).parent / "data" / "covid19"
    if not folder.is_dir():
        raise SpecError("source", "mira", f"a tcrdist3 installation with {folder}")
    return folder


@dataclass
class EpitopeSet:
    """One MIRA set: its id, peptides and distinct CDR3s."""

    mira_id: int
    peptides: list[str]
    cdr3s: list[str]


@cache  # ~3 s of CSV parsing; pools of one process share it (the files do not change)
def read_mira(folder: Path) -> list[EpitopeSet]:
    """The MIRA sets of `folder`, ordered by MIRA id; each set's distinct valid CDR3s."""
    import pandas as pd

    sets = []
    for path in sorted(folder.iterdir()):
        match = MIRA_FILE.match(path.name)
        if match is None:
            continue
        column = pd.read_csv(path, usecols=[CDR3_COLUMN])[CDR3_COLUMN].dropna().astype(str)
        valid = column[column.str.fullmatch(f"[{AMINO_ACIDS}]+")]
        sets.append(EpitopeSet(int(match.group(1)), match.group(3).split("_"),
                               sorted(set(valid.tolist()))))
    if len(sets) < 2:
        raise SpecError("source", "mira", f"a tcrdist3 installation with MIRA set files in "
                                          f"{folder} (found {len(sets)})")
    return sorted(sets, key=lambda s: s.mira_id)


@POOLS.register("tcr")
@dataclass
class ReceptorPool(FinitePool):
    """Real TCR-beta CDR3s of the 29 SARS-CoV-2 MIRA sets (tcrdist3); concept = epitope set.

    Instances: (max_length,) int64 CDR3-beta tokens; concept = MIRA epitope set.

    max_length: pad to this length (default: the longest kept CDR3); longer CDR3s are dropped.
    """

    source: str = "mira"
    max_length: int | None = None

    kind = "sequence"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in SOURCES:
            raise SpecError("source", self.source, f"one of {list(SOURCES)}")
        n = self.max_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise SpecError("max_length", n, "an integer >= 1 (or unset for the longest CDR3)")

    @cached_property
    def sets(self) -> list[EpitopeSet]:
        return list(read_mira(mira_directory()))

    @cached_property
    def receptors(self) -> tuple[list[str], np.ndarray]:
        """(CDR3 strings (M,), concept ids (M,) int64): unambiguous, short enough ones."""
        owners: dict[str, set[int]] = {}
        for k, epitope_set in enumerate(self.sets):
            for cdr3 in epitope_set.cdr3s:
                owners.setdefault(cdr3, set()).add(k)
        kept = sorted((cdr3, next(iter(ks))) for cdr3, ks in owners.items() if len(ks) == 1)
        if self.max_length is not None:
            kept = [(c, k) for c, k in kept if len(c) <= self.max_length]
        present = {k for _, k in kept}
        if len(present) < len(self.sets):
            raise SpecError("max_length", self.max_length,
                            "a length that keeps receptors of every MIRA set")
        return [c for c, _ in kept], np.array([k for _, k in kept], dtype=np.int64)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        cdr3s, concepts = self.receptors
        tokens = np.zeros((len(cdr3s), self.padded_length), dtype=np.int64)
        for row, cdr3 in enumerate(cdr3s):
            tokens[row, :len(cdr3)] = encode(cdr3)
        return tokens, concepts

    @property
    def padded_length(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return max(len(c) for c in self.receptors[0])

    @property
    def n_concepts(self) -> int:
        return len(self.sets)

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return (self.padded_length,)

    @property
    def vocab_size(self) -> int:
        return N_LETTERS + 1

    @property
    def concept_names(self) -> list[str]:
        return [s.peptides[0] for s in self.sets]

    def source_names(self, rows: np.ndarray) -> list[str]:
        """The CDR3 of each receptor row (BagSplit.source_index)."""
        return [decode(self.features[int(r)]) for r in np.asarray(rows).tolist()]

    def metadata(self) -> dict[str, object]:
        counts = np.bincount(self.receptors[1], minlength=self.n_concepts)
        return {"source": "MIRA (Nolan et al. 2020) via tcrdist3",
                "alphabet": AMINO_ACIDS,
                "mira_ids": [s.mira_id for s in self.sets],
                "peptides": [s.peptides for s in self.sets],
                "distinct_cdr3s_per_set": [len(s.cdr3s) for s in self.sets],
                "kept_per_set": counts.tolist(),
                "concepts": "k = receptors specific to MIRA set k (named by its first peptide)"}
