"""Training one set model: Adam, padded mini-batches, weighted cross-entropy, early stopping.

Speed matters (hundreds of trainings on a small CPU), so each split is padded once into
tensors; a training step only indexes the bags of its batch and trims the padding to the
largest bag in that batch. The validation split is sorted by bag size and cut into chunks once.

Device. Training runs on ``TrainSpec.device`` (attnsets.device). The padded splits are moved
there once; each epoch's bag order is moved once; batch losses stay on the device and are read
once per epoch, so a CUDA training loop never waits for the GPU inside an epoch. A diverged
batch is therefore reported when its epoch ends (the rest of that epoch is wasted work).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from attnsets.data.bags import BagSplit
from attnsets.data.generate import SetDataset
from attnsets.device import check_device_string, deterministic, resolve_device, seeded, to_device
from attnsets.errors import SpecError, TrainingDivergedError
from attnsets.models.base import InputInfo, ModelSpec, SetModel, build_model, logits_only
from attnsets.registry import build_dataclass
from attnsets.spec.constraints import (
    Interval,
    Options,
    check_declared,
    constrained,
    is_real,
    or_none,
)

ClassWeights = str | Sequence[float] | None
#: How fit_ensemble may train its members (TrainSpec.ensemble).
ENSEMBLE_STRATEGIES = ("auto", "vectorised", "sequential")


@dataclass(frozen=True)
class TrainSpec:
    """How to train. patience: epochs without a lower validation loss before stopping (None =
    run all epochs; the best state is restored either way). class_weights: "balanced"
    (n / (C * count_c) on the training labels, as scikit-learn), None (all 1) or one positive
    weight per class. max_grad_norm: clip each model's (each ensemble member's) gradient norm.
    divergence_threshold: a batch loss above this (or NaN / inf) raises TrainingDivergedError.
    eval_batch_size: bags per validation forward pass. device: where to train, "auto" (CUDA
    when available, else CPU), "cpu", "cuda" or "cuda:N"; checked for syntax here and for
    availability when training starts (see attnsets.device). ensemble: how fit_ensemble trains
    its members, "vectorised" (one stacked pass under vmap), "sequential" (one fit per member)
    or "auto" (the measured choice per encoder, see attnsets.training.ensemble); every choice
    gives the members of a lone fit up to float rounding. betas: Adam's (beta1, beta2)."""

    epochs: int = constrained(Interval(int, 1), default=50)
    batch_size: int = constrained(Interval(int, 1), default=16)
    lr: float = constrained(Interval(float, 0, math.inf, closed="neither"), default=1e-3)
    weight_decay: float = constrained(Interval(float, 0, math.inf, closed="left"), default=1e-4)
    #: None = no early stop.
    patience: int | None = constrained(or_none(Interval(int, 1)), default=10)
    class_weights: ClassWeights = "balanced"
    seed: int = constrained(Interval(int, 0), default=0)
    max_grad_norm: float | None = constrained(
        or_none(Interval(float, 0, math.inf, closed="neither")), default=None)
    #: inf checks only for NaN / inf losses.
    divergence_threshold: float = constrained(Interval(float, 0, closed="neither"), default=1e4)
    eval_batch_size: int = constrained(Interval(int, 1), default=256)
    #: Not part of a run's identity (attnsets.spec): the same run on a CPU and a GPU.
    device: str = field(default="auto", metadata={"identity": False})
    ensemble: str = constrained(Options(ENSEMBLE_STRATEGIES), default="auto")
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        check_declared(self)
        weights = self.class_weights
        if isinstance(weights, str):
            if weights != "balanced":
                raise SpecError("class_weights", weights,
                                '"balanced", None, or a list of positive weights')
        elif weights is not None:
            if not isinstance(weights, Sequence) or len(weights) == 0 or not all(
                    is_real(w) and 0 < w < math.inf for w in weights):
                raise SpecError("class_weights", weights,
                                '"balanced", None, or a list of positive finite weights')
            # A tuple keeps the frozen spec hashable.
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))
        betas = self.betas
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2 \
                or not all(is_real(b) and 0 <= b < 1 for b in betas):
            raise SpecError("betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        check_device_string(self.device, "device")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.class_weights, tuple):
            out["class_weights"] = list(self.class_weights)
        out["betas"] = list(self.betas)
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], path: str = "train") -> TrainSpec:
        """Build from a config table; unknown keys and bad values raise SpecError at `path.key`.
        Missing keys take their defaults (records written before `device` existed read as
        "auto")."""
        if not isinstance(data, dict):
            raise SpecError(path, data, "a table of training settings")
        return build_dataclass(TrainSpec, data, path)  # type: ignore[no-any-return]


@dataclass
class History:
    """Per-epoch record. Epochs are 0-based indexes into the lists; best_epoch is the epoch
    whose state the model holds after training; stopped_epoch is the last epoch that ran.
    wall_time: seconds for the whole training (for ensemble members: the shared pass)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_epoch: int = -1
    stopped_early: bool = False
    wall_time: float = 0.0

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch] if self.best_epoch >= 0 else math.nan

    @property
    def best_val_accuracy(self) -> float:
        return self.val_accuracy[self.best_epoch] if self.best_epoch >= 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class EpochStats(NamedTuple):
    """What a progress callback receives after each epoch (member: ensemble member or None)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    improved: bool
    member: int | None = None


ProgressCallback = Callable[[EpochStats], None]


@dataclass
class EarlyStopping:
    """The early-stopping and history bookkeeping of one model (or one ensemble member):
    `record` appends an epoch's losses to `history`, tracks the best validation loss and says
    whether the epoch improved on it and whether `patience` epochs without gain have passed."""

    history: History
    patience: int | None
    epochs: int
    best_loss: float = math.inf
    without_gain: int = 0

    def record(self, epoch: int, train_loss: float, val_loss: float, val_accuracy: float,
               seconds: float) -> tuple[bool, bool]:
        """(improved, stop) after `epoch`; on stop, `history.stopped_early` is set."""
        history = self.history
        improved = bool(val_loss < self.best_loss)
        if improved:
            self.best_loss = val_loss
            history.best_epoch = epoch
            self.without_gain = 0
        else:
            self.without_gain += 1
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_accuracy)
        history.epoch_seconds.append(seconds)
        history.stopped_epoch = epoch
        stop = self.patience is not None and self.without_gain >= self.patience
        if stop:
            history.stopped_early = epoch < self.epochs - 1
        return improved, stop


@dataclass
class FitResult:
    """The trained model (holding its best validation state) and its history."""

    model: SetModel
    history: History


@dataclass(frozen=True)
class PaddedSplit:
    """A whole split padded once. x: (B, N_max, *shape) (float64 stored as float32);
    mask: (B, N_max) bool; labels: (B,) int64; sizes: (B,) numpy int64."""

    x: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    sizes: np.ndarray

    @staticmethod
    def from_split(split: BagSplit) -> PaddedSplit:
        sizes = split.sizes.astype(np.int64)
        n_max = max(int(sizes.max()) if len(sizes) else 1, 1)
        bag = split.bag_index
        position = np.arange(len(bag)) - split.offsets[bag]
        instances = split.instances
        if instances.dtype == np.float64:
            instances = instances.astype(np.float32)
        x = np.zeros((len(split), n_max, *instances.shape[1:]), dtype=instances.dtype)
        x[bag, position] = instances
        mask = np.zeros((len(split), n_max), dtype=bool)
        mask[bag, position] = True
        labels = np.asarray(split.labels, dtype=np.int64)
        return PaddedSplit(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(labels),
                           sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device) -> PaddedSplit:
        """The split with its tensors on `device` (pinned, non-blocking copies to CUDA); sizes
        stay on the host so that batching needs no device-to-host read."""
        return PaddedSplit(to_device(self.x, device), to_device(self.mask, device),
                           to_device(self.labels, device), self.sizes)

    def batch(self, index: np.ndarray, rows: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """index: (..., b) bag ids -> x (..., b, n, *shape), mask (..., b, n), labels (..., b),
        padded only to n = the largest bag among `index`. rows: the same ids already on the
        split's device (saves a host-to-device copy, which on CUDA would wait for the GPU)."""
        n = max(int(self.sizes[index].max()), 1)
        if rows is None:
            rows = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(self.device)
        return self.x[:, :n][rows], self.mask[:, :n][rows], self.labels[rows]


def eval_chunks(split: BagSplit, chunk_size: int, device: torch.device | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The split as (x, mask, labels) chunks of <= chunk_size bags, sorted by size so that each
    chunk carries little padding, on `device` (default cpu). For order-free statistics (loss
    sums, accuracy)."""
    padded = PaddedSplit.from_split(split)
    if device is not None:
        padded = padded.to(device)
    order = np.argsort(padded.sizes, kind="stable")
    return [padded.batch(order[start:start + chunk_size])
            for start in range(0, len(order), chunk_size)]


def class_weight_vector(class_weights: ClassWeights, labels: np.ndarray,
                        n_classes: int) -> torch.Tensor:
    """(C,) float32 cross-entropy weights. "balanced" = n / (C * count_c) over `labels`
    (a class absent from `labels` gets 1)."""
    if class_weights is None:
        return torch.ones(n_classes)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise SpecError("class_weights", class_weights, '"balanced", None, or a list')
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
        weights = np.ones(n_classes)
        present = counts > 0
        weights[present] = len(labels) / (n_classes * counts[present])
        return torch.tensor(weights, dtype=torch.float32)
    if len(class_weights) != n_classes:
        raise SpecError("class_weights", list(class_weights),
                        f"{n_classes} positive weights (one per class)")
    return torch.tensor([float(w) for w in class_weights], dtype=torch.float32)


def loss_terms(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits: (..., B, C); labels: (..., B); weights: (C,) -> per leading index
    (sum_i w_{y_i} * -log p_i(y_i), sum_i w_{y_i}, number correct), each (...,)."""
    log_p = torch.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    bag_weights = weights[labels]
    correct = (logits.argmax(-1) == labels).sum(-1)
    return (bag_weights * nll).sum(-1), bag_weights.sum(-1), correct


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """logits: (..., B, C) -> (...,) weighted mean cross-entropy over B, the same as
    torch.nn.functional.cross_entropy(logits, labels, weight=weights) for one batch."""
    total, weight_sum, _ = loss_terms(logits, labels, weights)
    return total / weight_sum


def make_optimizer(params: Iterable[torch.Tensor], spec: TrainSpec) -> torch.optim.Adam:
    """Adam with L2 weight decay. Its update is elementwise, so a stacked ensemble optimised by
    one Adam moves each member exactly as its own Adam would."""
    return torch.optim.Adam(list(params), lr=spec.lr, betas=spec.betas,
                            weight_decay=spec.weight_decay, fused=True)


def input_info(dataset: SetDataset) -> InputInfo:
    return InputInfo.from_dataset(dataset)


def diverged_error(where: str, epoch: int, batch: int | None, loss: float, threshold: float,
                   lr: float, data_nonfinite: int) -> TrainingDivergedError:
    """A TrainingDivergedError whose message says where, what loss, and likely causes."""
    place = f"epoch {epoch}" + (f", batch {batch}" if batch is not None else " (validation)")
    what = "is not finite" if not math.isfinite(loss) else f"exceeds the threshold {threshold:g}"
    hint = (f"the training data holds {data_nonfinite} non-finite feature values"
            if data_nonfinite else f"try a lower learning rate (lr={lr:g}) or set max_grad_norm")
    return TrainingDivergedError(f"{where}: loss {loss:g} at {place} {what}; {hint}")


def first_diverged(values: np.ndarray, threshold: float) -> int | None:
    """Index of the first entry of `values` (read from the device once per epoch) that is NaN,
    infinite or above `threshold`; None if there is none."""
    bad = np.flatnonzero(~(values <= threshold))  # ~(<=) also catches NaN
    return int(bad[0]) if len(bad) else None


def read_losses(batch_losses: Sequence[torch.Tensor]) -> np.ndarray:
    """(n_batches, ...) float64 host copy of the detached batch losses an epoch kept on the
    device: one device-to-host read per epoch instead of one per step."""
    return torch.stack(list(batch_losses)).cpu().numpy().astype(np.float64)


def count_nonfinite(split: BagSplit) -> int:
    instances = split.instances
    if not np.issubdtype(instances.dtype, np.floating):
        return 0
    return int(instances.size - np.count_nonzero(np.isfinite(instances)))


def evaluate(model: nn.Module,
             chunks: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             weights: torch.Tensor) -> tuple[float, float]:
    """(weighted mean cross-entropy, accuracy) of `model` in eval mode over the chunks (which,
    like `weights`, live on the model's device)."""
    was_training = model.training
    model.eval()
    # float64 sums on the device, read once: the same additions, in the same order, as summing
    # Python floats chunk by chunk, without one device-to-host read per chunk.
    sums = torch.zeros(3, dtype=torch.float64, device=weights.device)
    count = 0
    with torch.no_grad():
        for x, mask, labels in chunks:
            chunk_total, chunk_weight, chunk_correct = loss_terms(logits_only(model, x, mask), labels,
                                                                  weights)
            sums += torch.stack([chunk_total.double(), chunk_weight.double(),
                                 chunk_correct.double()])
            count += len(labels)
    model.train(was_training)
    total, weight_sum, correct = sums.tolist()
    return total / weight_sum, correct / count


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def check_train_spec(train_spec: TrainSpec | None) -> TrainSpec:
    """The given TrainSpec, or the defaults for None."""
    if train_spec is None:
        return TrainSpec()
    if not isinstance(train_spec, TrainSpec):
        raise SpecError("train_spec", type(train_spec).__name__,
                        "a TrainSpec (TrainSpec.from_dict reads a config table)")
    return train_spec


def _train_epoch(model: SetModel, train: PaddedSplit, order: np.ndarray,
                 optimizer: torch.optim.Optimizer, weights: torch.Tensor | None,
                 spec: TrainSpec, epoch: int, dataset: SetDataset, device: torch.device
                 ) -> float:
    """One pass over the training bags in `order` (a permutation of the rows); the summed
    loss (batch mean x batch size). Raises TrainingDivergedError on a diverged batch."""
    model.train()
    rows = to_device(torch.from_numpy(order), device)
    starts = range(0, len(order), spec.batch_size)
    batch_losses = []
    for start in starts:
        index = order[start:start + spec.batch_size]
        x, mask, labels = train.batch(index, rows[start:start + spec.batch_size])
        loss = weighted_cross_entropy(logits_only(model, x, mask), labels, weights)
        batch_losses.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
        optimizer.step()
    values = read_losses(batch_losses)
    bad = first_diverged(values, spec.divergence_threshold)
    if bad is not None:
        raise diverged_error("training", epoch, bad, float(values[bad]),
                             spec.divergence_threshold, spec.lr, count_nonfinite(dataset.train))
    loss_sum = 0.0
    for start, value in zip(starts, values, strict=True):
        loss_sum += float(value) * len(order[start:start + spec.batch_size])
    return loss_sum


def fit(model_or_spec: SetModel | ModelSpec, dataset: SetDataset,
        train_spec: TrainSpec | None = None, *,
        progress: ProgressCallback | None = None) -> FitResult:
    """Train on dataset.train, early-stop on dataset.val, restore the best validation state.

    A ModelSpec is built with init seed ``train_spec.seed`` (on the CPU, so every device starts
    from the same weights); a SetModel is trained in place. Both are moved to
    ``train_spec.device`` and the returned model lives there. The data order comes from
    ``numpy.random.default_rng(train_spec.seed)`` and dropout (if any) from torch generators
    (CPU and the training device) seeded the same way, so the same seed gives identical weights
    on the CPU (for a fixed number of torch threads) and agreement within the tolerance of
    attnsets.device on CUDA. Raises SpecError (field ``train.device``) for a device this
    machine lacks, and TrainingDivergedError on a NaN, infinite or above-threshold loss (at the
    end of that epoch) instead of returning a broken model.
    """
    spec = check_train_spec(train_spec)
    device = resolve_device(spec.device, "train.device")
    if isinstance(model_or_spec, ModelSpec):
        model = build_model(model_or_spec, input_info(dataset), seed=spec.seed)
    elif isinstance(model_or_spec, SetModel):
        model = model_or_spec
    else:
        raise SpecError("model", type(model_or_spec).__name__, "a ModelSpec or a SetModel")
    model.to(device)
    train = PaddedSplit.from_split(dataset.train).to(device)
    val = eval_chunks(dataset.val, spec.eval_batch_size, device)
    weights = to_device(class_weight_vector(spec.class_weights, dataset.train.labels,
                                            dataset.n_classes), device)
    order_rng = np.random.default_rng(spec.seed)
    optimizer = make_optimizer(model.parameters(), spec)  # after .to: fused Adam is per device
    history = History()
    stopping = EarlyStopping(history, spec.patience, spec.epochs)
    best_state = snapshot(model)
    started = time.perf_counter()
    with seeded(spec.seed, device), deterministic(device):
        for epoch in range(spec.epochs):
            epoch_started = time.perf_counter()
            loss_sum = _train_epoch(model, train, order_rng.permutation(len(train)), optimizer,
                                    weights, spec, epoch, dataset, device)
            val_loss, val_accuracy = evaluate(model, val, weights)
            if not math.isfinite(val_loss):
                raise diverged_error("training", epoch, None, val_loss, spec.divergence_threshold,
                                     spec.lr, count_nonfinite(dataset.val))
            improved, stop = stopping.record(epoch, loss_sum / len(train), val_loss, val_accuracy,
                                             time.perf_counter() - epoch_started)
            if improved:
                best_state = snapshot(model)
            if progress is not None:
                progress(EpochStats(epoch, history.train_loss[-1], val_loss, val_accuracy,
                                    improved))
            if stop:
                break
    model.load_state_dict(best_state)
    model.eval()
    history.wall_time = time.perf_counter() - started
    return FitResult(model, history)
