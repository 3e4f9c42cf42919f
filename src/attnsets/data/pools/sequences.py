"""Protein-like sequences with implanted motifs (DeepRC-style immune-repertoire simulation).

Concepts: 0 = background (random amino acids, no motif anywhere); k >= 1 = carries an
implanted copy of motif k (and no other motif). So n_concepts = number of motifs + 1, and a
`presence` rule with ``key = k`` labels a bag positive iff it holds a sequence with motif k.

Recognition ("sequence s contains motif m"): some window of s lying fully inside the sequence
differs from m in at most `max_mismatches` positions. Ground truth is exact under this
definition: background sequences that contain a motif by chance are redrawn, and so are
implanted sequences that contain a second, different motif. An implanted copy has each
position substituted by a different amino acid with probability `mutation_rate`, conditioned
on at most `max_mismatches` substitutions, so every copy stays recognisable. Motifs must
differ from each other in more than 2 * max_mismatches positions, so no copy of one motif can
be recognised as another.

Encoding: int64 tokens, amino acid i of ``ACDEFGHIKLMNPQRSTVWY`` -> i + 1, 0 = padding after
the end; instance shape (max_length,), vocab_size 21.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from attnsets.data.pools.base import POOLS, InstancePool
from attnsets.errors import SpecError
from attnsets.spec.constraints import is_int, is_real

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
N_LETTERS = len(AMINO_ACIDS)
PADDING = 0
#: Redraw rounds before giving up; each round redraws only the rows that still hold a
#: chance motif, so a feasible spec needs a few dozen rounds even for millions of rows.
MAX_ROUNDS = 200
#: Specs where a random sequence is motif-free with lower probability than this are refused.
MIN_CLEAN_PROBABILITY = 0.2
_LETTER_TOKEN = {letter: i + 1 for i, letter in enumerate(AMINO_ACIDS)}


def encode(text: str) -> np.ndarray:
    """Amino-acid string -> (len,) int64 tokens in 1..20."""
    bad = sorted(set(text) - set(AMINO_ACIDS))
    if bad:
        raise SpecError("sequence", text, f"letters of {AMINO_ACIDS} (found {''.join(bad)})")
    return np.array([_LETTER_TOKEN[ch] for ch in text], dtype=np.int64)


def decode(tokens: np.ndarray) -> str:
    """(L,) tokens -> amino-acid string; padding zeros are dropped."""
    tokens = np.asarray(tokens)
    return "".join(AMINO_ACIDS[t - 1] for t in tokens[tokens != PADDING].tolist())


def contains_motif(tokens: np.ndarray, motif: np.ndarray | str,
                   max_mismatches: int = 0) -> np.ndarray:
    """Does each sequence hold a window within `max_mismatches` substitutions of `motif`?

    tokens: (n, L) int, zero-padded at the end -> (n,) bool. Windows reaching into the
    padding do not count.
    """
    tokens = np.asarray(tokens)
    motif_tokens = encode(motif) if isinstance(motif, str) else np.asarray(motif)
    lengths = (tokens != PADDING).sum(axis=1)
    return _occurs(tokens, lengths, motif_tokens, max_mismatches)


def _occurs(tokens: np.ndarray, lengths: np.ndarray, motif: np.ndarray,
            max_mismatches: int) -> np.ndarray:
    """(n,) bool. tokens: (n, L); lengths: (n,) true lengths; motif: (k,)."""
    k = len(motif)
    if tokens.shape[1] < k:
        return np.zeros(len(tokens), dtype=bool)
    windows = sliding_window_view(tokens, k, axis=1)  # (n, L - k + 1, k), a view
    mismatches = np.zeros(windows.shape[:2], dtype=np.int16)
    # One pass per motif position keeps memory at (n, windows) instead of (n, windows, k).
    for position, letter in enumerate(motif.tolist()):
        mismatches += windows[:, :, position] != letter
    inside = np.arange(windows.shape[1])[None, :] <= (lengths - k)[:, None]
    return ((mismatches <= max_mismatches) & inside).any(axis=1)


def _hamming_to_windows(short: np.ndarray, long: np.ndarray) -> int:
    """Smallest Hamming distance between `short` and any same-length window of `long`."""
    windows = sliding_window_view(long, len(short))
    return int((windows != short[None, :]).sum(axis=1).min())


@POOLS.register("sequences")
@dataclass
class SequencePool(InstancePool):
    """Random amino-acid strings, lengths uniform in [min_length, max_length]; concept k >= 1
    carries motif k (see the module docstring for the exact ground truth).

    Motifs are given (`motifs`, strings over ACDEFGHIKLMNPQRSTVWY) or drawn (`n_motifs` of
    `motif_length`, default 3 of 5, from `motif_seed`). Infinite: every draw is fresh.
    """

    motifs: list[str] | None = None
    n_motifs: int | None = None
    motif_length: int | None = None
    motif_seed: int = 0
    min_length: int = 15
    max_length: int = 25
    mutation_rate: float = 0.0
    max_mismatches: int = 0

    kind = "sequence"

    def __post_init__(self) -> None:
        for name in ("min_length", "max_length"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise SpecError(name, value, "an integer >= 1")
        if self.max_length < self.min_length:
            raise SpecError("max_length", self.max_length,
                            f"an integer >= min_length ({self.min_length})")
        if not is_int(self.motif_seed) or self.motif_seed < 0:
            raise SpecError("motif_seed", self.motif_seed, "an integer >= 0")
        if not is_int(self.max_mismatches) or self.max_mismatches < 0:
            raise SpecError("max_mismatches", self.max_mismatches, "an integer >= 0")
        if not is_real(self.mutation_rate):
            raise SpecError("mutation_rate", self.mutation_rate, "a probability in [0, 1)")
        if not 0.0 <= self.mutation_rate < 1.0:
            raise SpecError("mutation_rate", self.mutation_rate, "a probability in [0, 1)")
        if self.mutation_rate > 0 and self.max_mismatches == 0:
            raise SpecError("max_mismatches", 0, "an integer >= 1 when mutation_rate > 0 "
                            "(the substitutions a copy may carry and still be recognised)")
        motif_tokens = self._given_motifs() if self.motifs is not None else self._drawn_motifs()
        self.motif_tokens: list[np.ndarray] = motif_tokens
        self._check_chance_matches()

    # ----------------------------------------------------------------------------- motifs
    def _check_shape(self, field: str, value: object, lengths: Sequence[int]) -> None:
        shortest, longest = min(lengths), max(lengths)
        if longest > self.min_length:
            raise SpecError(field, value, f"motifs no longer than min_length ({self.min_length})")
        if 2 * self.max_mismatches >= shortest:
            raise SpecError("max_mismatches", self.max_mismatches,
                            f"fewer than half the motif length (< {(shortest + 1) // 2} for "
                            f"motifs of length {shortest})")

    def _given_motifs(self) -> list[np.ndarray]:
        motifs = self.motifs
        if isinstance(motifs, str) or not isinstance(motifs, list | tuple) or not motifs:
            raise SpecError("motifs", motifs, f"a non-empty list of strings over {AMINO_ACIDS}")
        for motif in motifs:
            if not isinstance(motif, str) or not motif or set(motif) - set(AMINO_ACIDS):
                raise SpecError("motifs", motif, f"non-empty strings over {AMINO_ACIDS}")
        if len(set(motifs)) != len(motifs):
            raise SpecError("motifs", list(motifs), "distinct motifs")
        if self.n_motifs is not None and self.n_motifs != len(motifs):
            raise SpecError("n_motifs", self.n_motifs,
                            f"unset, or the number of given motifs ({len(motifs)})")
        lengths = [len(m) for m in motifs]
        if self.motif_length is not None and set(lengths) != {self.motif_length}:
            raise SpecError("motif_length", self.motif_length,
                            f"unset, or the length of every given motif ({sorted(set(lengths))})")
        self._check_shape("motifs", list(motifs), lengths)
        tokens = [encode(m).astype(np.uint8) for m in motifs]
        limit = 2 * self.max_mismatches
        for i, a in enumerate(tokens):
            for j, b in enumerate(tokens):
                if i == j or len(a) > len(b):
                    continue
                distance = _hamming_to_windows(a, b)
                if distance <= limit:
                    raise SpecError("motifs", [motifs[i], motifs[j]],
                                    f"motifs that differ in more than 2 * max_mismatches = "
                                    f"{limit} positions (also from every stretch of a longer "
                                    f"motif); these differ in {distance}")
        return tokens

    def _drawn_motifs(self) -> list[np.ndarray]:
        n_motifs = 3 if self.n_motifs is None else self.n_motifs
        length = 5 if self.motif_length is None else self.motif_length
        if not is_int(n_motifs) or n_motifs < 1:
            raise SpecError("n_motifs", n_motifs, "an integer >= 1")
        if not is_int(length) or length < 1:
            raise SpecError("motif_length", length, "an integer >= 1")
        self._check_shape("motif_length", length, [length])
        rng = np.random.default_rng(self.motif_seed)
        motifs = rng.integers(1, N_LETTERS + 1, size=(n_motifs, length), dtype=np.uint8)
        limit = 2 * self.max_mismatches
        for _ in range(MAX_ROUNDS):
            distances = (motifs[:, None, :] != motifs[None, :, :]).sum(axis=2)
            too_close = np.triu(distances <= limit, k=1).any(axis=0)
            if not too_close.any():
                return list(motifs)
            motifs[too_close] = rng.integers(1, N_LETTERS + 1, size=(int(too_close.sum()), length),
                                             dtype=np.uint8)
        raise SpecError("n_motifs", n_motifs,
                        f"few enough motifs of length {length} to draw that differ pairwise in "
                        f"more than 2 * max_mismatches = {limit} positions")

    def _check_chance_matches(self) -> None:
        """Refuse specs where random sequences hold a motif so often that redrawing stalls."""
        expected_hits = 0.0
        for motif in self.motif_tokens:
            k = len(motif)
            # Probability that one random window lies within max_mismatches of the motif.
            window = sum(math.comb(k, i) * (N_LETTERS - 1) ** i
                         for i in range(self.max_mismatches + 1)) / N_LETTERS ** k
            expected_hits += (self.max_length - k + 1) * window
        clean = math.exp(-expected_hits)
        if clean < MIN_CLEAN_PROBABILITY:
            field = "motifs" if self.motifs is not None else "motif_length"
            raise SpecError(field, getattr(self, field),
                            f"motifs long enough (or max_mismatches small enough) that random "
                            f"sequences rarely contain one; here only {clean:.1%} of length "
                            f"{self.max_length} are motif-free (need {MIN_CLEAN_PROBABILITY:.0%})")

    # ------------------------------------------------------------------------ pool API
    @property
    def n_concepts(self) -> int:
        return len(self.motif_tokens) + 1

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return (self.max_length,)

    @property
    def vocab_size(self) -> int:
        return N_LETTERS + 1

    @cached_property
    def motif_strings(self) -> list[str]:
        return [decode(m) for m in self.motif_tokens]

    @property
    def concept_names(self) -> list[str]:
        return ["background"] + [f"motif {k} ({m})" for k, m in enumerate(self.motif_strings, 1)]

    def metadata(self) -> dict[str, object]:
        return {
            "motifs": self.motif_strings,
            "alphabet": AMINO_ACIDS,
            "max_mismatches": self.max_mismatches,
            "mutation_rate": self.mutation_rate,
            "concepts": "0 = background (no motif); k >= 1 = carries motif k (motifs[k - 1])",
        }

    def draw(self, concepts: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
        """(n,) concept ids -> (n, max_length) int64 tokens; rows holding a motif they should
        not are redrawn in rounds (one vectorised pass per round over the remaining rows)."""
        concepts = np.asarray(concepts, dtype=np.int64)
        if concepts.size and (concepts.min() < 0 or concepts.max() >= self.n_concepts):
            raise SpecError("concepts", sorted(set(concepts.tolist()))[:5],
                            f"concept ids in 0..{self.n_concepts - 1}")
        tokens = np.zeros((len(concepts), self.max_length), dtype=np.uint8)
        pending = np.arange(len(concepts))
        rounds = 0
        while pending.size:
            if rounds == MAX_ROUNDS:
                raise SpecError("motifs", self.motif_strings,
                                f"motifs that random sequences rarely contain: {pending.size} "
                                f"sequences still held a stray motif after {MAX_ROUNDS} redraws")
            fresh, lengths = self._fresh(concepts[pending], rng)
            tokens[pending] = fresh
            pending = pending[self._stray_motif(fresh, lengths, concepts[pending])]
            rounds += 1
        return tokens.astype(np.int64)

    def _fresh(self, concepts: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """Random sequences with motifs implanted. -> tokens (m, max_length) uint8, lengths (m,)."""
        m = len(concepts)
        lengths = rng.integers(self.min_length, self.max_length + 1, size=m)
        tokens = rng.integers(1, N_LETTERS + 1, size=(m, self.max_length), dtype=np.uint8)
        tokens[np.arange(self.max_length)[None, :] >= lengths[:, None]] = PADDING
        for motif_id, motif in enumerate(self.motif_tokens, start=1):
            rows = np.flatnonzero(concepts == motif_id)
            if rows.size == 0:
                continue
            starts = rng.integers(0, lengths[rows] - len(motif) + 1)
            columns = starts[:, None] + np.arange(len(motif))[None, :]
            tokens[rows[:, None], columns] = self._copies(motif, rows.size, rng)
        return tokens, lengths

    def _copies(self, motif: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, k) copies of `motif`, each position substituted with prob. mutation_rate,
        conditioned on at most max_mismatches substitutions per copy."""
        k = len(motif)
        copies = np.repeat(motif[None, :], count, axis=0)
        if self.mutation_rate == 0:
            return copies
        p = self.mutation_rate
        allowed = np.arange(min(self.max_mismatches, k) + 1)
        pmf = np.array([math.comb(k, i) * p ** i * (1 - p) ** (k - i) for i in allowed.tolist()])
        n_substituted = rng.choice(allowed, size=count, p=pmf / pmf.sum())
        # A random rank per position picks a uniformly random subset of n_substituted positions.
        ranks = rng.random((count, k)).argsort(axis=1).argsort(axis=1)
        substituted = ranks < n_substituted[:, None]
        shift = rng.integers(1, N_LETTERS, size=(count, k), dtype=np.uint8)
        other_letter = (copies - 1 + shift) % N_LETTERS + 1  # never the original letter
        copies[substituted] = other_letter[substituted]
        return copies

    def _stray_motif(self, tokens: np.ndarray, lengths: np.ndarray,
                     concepts: np.ndarray) -> np.ndarray:
        """(m,) bool: rows holding a motif other than their own (any motif, for background)."""
        stray = np.zeros(len(tokens), dtype=bool)
        for motif_id, motif in enumerate(self.motif_tokens, start=1):
            found = _occurs(tokens, lengths, motif, self.max_mismatches)
            stray |= found & (concepts != motif_id)
        return stray
