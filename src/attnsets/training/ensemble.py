"""Ensembles: K members of one architecture trained in one vectorised pass.

Member parameters are stacked along a new leading axis (K, ...) and the model is evaluated
with torch.func.functional_call under vmap. The training loss is the SUM over members of each
member's mean batch loss, so member k's gradient is exactly the gradient of its own loss, and
one Adam over the stacked tensors (elementwise) moves every member as its own Adam would.
Member k uses init seed seeds[k] and the data order of numpy.random.default_rng(seeds[k]), the
same as ``fit(spec, dataset, TrainSpec(seed=seeds[k]))``; only padding differs (batches of all
members are padded to a common size), so results agree up to float rounding. Dropout in a
readout head (`attnsets.models.head.SeededDropout`) draws its masks from each member's own seed
buffer, so members drop exactly what a lone fit drops; a user module with torch's nn.Dropout
draws different masks than a lone fit would (vmap's randomness="different"). Members that
early-stop are removed from the stacked pass (with their Adam state) and keep their best validation state.
Members must not update buffers while training (e.g. BatchNorm running statistics): vmap
cannot write them back.
Device: as fit, the pass runs on ``TrainSpec.device``; members are initialised on the CPU and
moved, batch losses and the best states stay on the device, and losses are read once per epoch.

Strategy. Vectorising pays where a training step is dominated by per-operator overhead (small
matrices: the mlp encoder on small bags); it loses where the encoder is compute bound and vmap
has no faster batched kernel (conv2d becomes a grouped convolution, slower on the CPU than the
members one after another). ``TrainSpec.ensemble`` (or the ``strategy`` argument) forces
"vectorised" or "sequential" (one ``fit`` per member: bit-identical to a lone fit); "auto" asks
the encoder class for an ``ensemble_strategy`` attribute and otherwise vectorises only small
steps (VECTORISE_MAX_MACS, measured by benchmarks/bench_ensemble_strategy.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from attnsets.data.generate import SetDataset
from attnsets.device import deterministic, resolve_device, seeded, to_device
from attnsets.errors import SpecError, TrainingDivergedError
from attnsets.models.base import (
    DEFAULT_ENCODER,
    ENCODERS,
    InputInfo,
    ModelSpec,
    SetModel,
    SetOutput,
    build_model,
    takes_need_maps,
)
from attnsets.spec.constraints import Interval, is_int
from attnsets.training.fit import (
    ENSEMBLE_STRATEGIES,
    EarlyStopping,
    EpochStats,
    History,
    PaddedSplit,
    ProgressCallback,
    TrainSpec,
    check_train_spec,
    class_weight_vector,
    count_nonfinite,
    diverged_error,
    eval_chunks,
    first_diverged,
    fit,
    input_info,
    loss_terms,
    make_optimizer,
    read_losses,
)

Tensors = dict[str, torch.Tensor]

#: "auto" vectorises when one member's encoder step is at most this many multiply-accumulates
#: (step_macs), and trains the members one after another above. Measured on one CPU thread,
#: 5 members, the demo/paper datasets (benchmarks/bench_ensemble_strategy.py, docs/benchmarks.md):
#: vectorised per member vs fit was 1.8-2.6x at 0.5-1 M MACs (mlp, bags of 20), 1.4-1.9x at
#: 1.8-3.7 M (cnn [8, 16] k3 on digits), 1.0x at 5 M and 0.88x at 10 M (mlp, bags of 200),
#: 0.98x at 69 M and 0.57x at 138 M (cnn [20, 50] k5). Small steps are overhead-bound, which
#: vmap amortises over members; large ones are compute or memory bound, where the stacked
#: kernels (a grouped convolution for conv2d, bmm over large activations) are no faster.
VECTORISE_MAX_MACS = 4e6


class Ensemble(nn.Module):
    """K SetModels of one architecture. forward gives every member's SetOutput stacked on a
    leading member axis: logits (K, B, C), attention (K, B, N), ..."""

    def __init__(self, members: Sequence[SetModel], seeds: Sequence[int] | None = None) -> None:
        super().__init__()
        if len(members) == 0:
            raise SpecError("members", [], "at least one SetModel")
        shapes = _shapes(members[0])
        for k, member in enumerate(members[1:], start=1):
            if _shapes(member) != shapes:
                raise SpecError(f"members[{k}]", type(member).__name__,
                                "models with the same parameter names and shapes as member 0")
        if seeds is not None and len(seeds) != len(members):
            raise SpecError("seeds", list(seeds), f"{len(members)} seeds, one per member")
        self.models = nn.ModuleList(members)
        self.seeds: list[int] | None = [int(s) for s in seeds] if seeds is not None else None
        self.spec: ModelSpec | None = getattr(members[0], "spec", None)
        self.info: InputInfo | None = getattr(members[0], "info", None)

    def __len__(self) -> int:
        return len(self.models)

    def members(self) -> list[SetModel]:
        return list(self.models)  # type: ignore[arg-type]

    def stacked_state(self) -> tuple[Tensors, Tensors]:
        """(parameters, buffers), each name -> (K, ...), differentiable w.r.t. the members."""
        member_params = [dict(m.named_parameters()) for m in self.models]
        member_buffers = [dict(m.named_buffers()) for m in self.models]
        params = {name: torch.stack([p[name] for p in member_params])
                  for name in member_params[0]}
        buffers = {name: torch.stack([b[name] for b in member_buffers])
                   for name in member_buffers[0]}
        return params, buffers

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        """x: (B, N, *shape), mask: (B, N) bool -> SetOutput with fields (K, B, ...)."""
        params, buffers = self.stacked_state()
        template = self.models[0]
        # vmap outputs must be tensors, so the fields a pooling leaves as None are dropped here
        # and restored afterwards.
        present: list[str] = []

        def run(p: Tensors, b: Tensors, x_: torch.Tensor, mask_: torch.Tensor) -> dict[str, Any]:
            out = functional_call(template, (p, b), (x_, mask_))
            present[:] = [name for name in SetOutput._fields if getattr(out, name) is not None]
            return {name: getattr(out, name) for name in present}

        stacked = vmap(run, in_dims=(0, 0, None, None), randomness="different")(
            params, buffers, x, mask)
        return SetOutput(**stacked)

    def predict_proba(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C) mean over members of each member's class probabilities."""
        return torch.softmax(self(x, mask).logits, dim=-1).mean(0)


@dataclass
class EnsembleResult:
    """The trained ensemble (each member in its best validation state) and one History per
    member (member k's wall_time: the whole shared pass when vectorised, its own fit when
    sequential)."""

    ensemble: Ensemble
    histories: list[History]


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def resolve_seeds(n_members: int | None, seeds: Sequence[int] | None, base_seed: int) -> list[int]:
    """Member seeds: `seeds` as given, else base_seed, base_seed + 1, ... (5 members if neither
    is given)."""
    if n_members is not None:
        Interval(int, 1).require(n_members, "n_members")
    if seeds is None:
        return [base_seed + k for k in range(n_members if n_members is not None else 5)]
    seed_list = list(seeds)
    if not seed_list or not all(is_int(s) and s >= 0 for s in seed_list):
        raise SpecError("seeds", seed_list, "a non-empty list of integers >= 0")
    if len(set(seed_list)) != len(seed_list):
        raise SpecError("seeds", seed_list, "distinct seeds (equal seeds give identical members)")
    if n_members is not None and n_members != len(seed_list):
        raise SpecError("n_members", n_members, f"the number of seeds ({len(seed_list)})")
    return [int(s) for s in seed_list]


def _keep_rows(params: Tensors, buffers: Tensors, optimizer: torch.optim.Adam, keep: torch.Tensor,
               spec: TrainSpec) -> tuple[Tensors, Tensors, torch.optim.Adam]:
    """Drop stopped members from the stacked pass, carrying the Adam state of the others."""
    new_params = {name: p.detach()[keep].clone().requires_grad_(True)
                  for name, p in params.items()}
    new_buffers = {name: b[keep].clone() for name, b in buffers.items()}
    new_optimizer = make_optimizer(new_params.values(), spec)
    for old, new in zip(params.values(), new_params.values(), strict=True):
        state = optimizer.state.get(old)
        if not state:
            continue
        new_optimizer.state[new] = {
            key: (value[keep].clone() if value.dim() > 0 else value.clone())
            if torch.is_tensor(value) else value
            for key, value in state.items()}
    return new_params, new_buffers, new_optimizer


def _clip_per_member(params: Tensors, max_norm: float) -> None:
    """Scale each member's gradient to total norm <= max_norm (as clip_grad_norm_ per model)."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    if not grads:
        return
    squared = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0)
    scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


def _evaluate_rows(logits_of: Callable[..., torch.Tensor], params: Tensors, buffers: Tensors,
                   chunks: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per stacked row (A,): weighted mean validation cross-entropy and accuracy, as host arrays.
    logits_of(params, buffers, x (B, N, ...), mask (B, N)) -> (A, B, C)."""
    first = next(iter(params.values()))
    rows, device = first.shape[0], first.device
    total = torch.zeros(rows, dtype=torch.float64, device=device)
    weight_sum = torch.zeros(rows, dtype=torch.float64, device=device)
    correct = torch.zeros(rows, dtype=torch.int64, device=device)
    with torch.no_grad():
        for x, mask, labels in chunks:
            chunk_total, chunk_weight, chunk_correct = loss_terms(
                logits_of(params, buffers, x, mask), labels.expand(rows, -1), weights)
            total += chunk_total.double()
            weight_sum += chunk_weight.double()
            correct += chunk_correct
    count = sum(len(labels) for _, _, labels in chunks)
    return (total / weight_sum).cpu().numpy(), (correct.double() / count).cpu().numpy()


def fit_ensemble(model_spec: ModelSpec, dataset: SetDataset, train_spec: TrainSpec | None = None,
                 n_members: int | None = None, seeds: Sequence[int] | None = None, *,
                 progress: ProgressCallback | None = None,
                 strategy: str | None = None) -> EnsembleResult:
    """Train K members, in one vectorised pass or one after another (``strategy``, default
    ``train_spec.ensemble``; see the module docstring); either way member k equals
    ``fit(model_spec, dataset, train_spec with seed=seeds[k])`` up to float rounding (exactly
    for "sequential"). Each member early-stops on its own validation loss. A member whose loss
    becomes NaN, infinite or exceeds the divergence threshold raises TrainingDivergedError
    naming the member and its seed (at the end of that epoch). The members of the returned
    ensemble live on the training device (``train_spec.device``; SpecError at ``train.device``
    if this machine lacks it)."""
    spec = check_train_spec(train_spec)
    if not isinstance(model_spec, ModelSpec):
        raise SpecError("model_spec", type(model_spec).__name__, "a ModelSpec")
    if strategy is not None and strategy not in ENSEMBLE_STRATEGIES:
        raise SpecError("strategy", strategy, f"one of {list(ENSEMBLE_STRATEGIES)}")
    member_seeds = resolve_seeds(n_members, seeds, spec.seed)
    device = resolve_device(spec.device, "train.device")
    info = input_info(dataset)
    chosen = resolve_strategy(model_spec, dataset, spec, strategy or spec.ensemble)
    if chosen == "sequential":
        return _fit_sequential(model_spec, dataset, spec, member_seeds, progress)
    return _fit_vectorised(model_spec, dataset, spec, member_seeds, device, info, progress)


def resolve_strategy(model_spec: ModelSpec, dataset: SetDataset, spec: TrainSpec,
                     strategy: str = "auto") -> str:
    """"vectorised" or "sequential" for training this model on this data: `strategy` unless it
    is "auto"; then the encoder class's ``ensemble_strategy`` attribute if it declares one;
    else "vectorised" when one member's training step is small, step_macs(...) <=
    VECTORISE_MAX_MACS, and "sequential" above (see VECTORISE_MAX_MACS for the measurements)."""
    if strategy != "auto":
        return strategy
    info = input_info(dataset)
    name = model_spec.encoder or DEFAULT_ENCODER.get(info.kind)
    declared = getattr(ENCODERS.get(name, "model.encoder"), "ensemble_strategy", None) \
        if name is not None else None
    if declared is not None:
        if declared not in ("vectorised", "sequential"):
            raise SpecError(f"{name}.ensemble_strategy", declared,
                            '"vectorised" or "sequential"')
        return str(declared)
    macs = step_macs(model_spec, dataset, spec.batch_size)
    return "vectorised" if macs <= VECTORISE_MAX_MACS else "sequential"


def step_macs(model_spec: ModelSpec, dataset: SetDataset, batch_size: int) -> float:
    """Multiply-accumulates of one member's encoder forward over one training batch: batch
    size (at most the training bags) x mean bag size x the encoder's MACs per instance (counted
    by torch's FlopCounterMode on one training instance)."""
    from torch.utils.flop_counter import FlopCounterMode

    train = dataset.train
    if len(train) == 0 or len(train.instances) == 0:
        return 0.0
    model = build_model(model_spec, input_info(dataset), seed=0)
    instance = torch.from_numpy(np.ascontiguousarray(train.instances[:1]))
    if instance.dtype == torch.float64:
        instance = instance.float()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encoder(instance)
    per_instance = counter.get_total_flops() / 2
    return float(min(batch_size, len(train)) * float(np.mean(train.sizes)) * per_instance)


def _fit_sequential(model_spec: ModelSpec, dataset: SetDataset, spec: TrainSpec,
                    member_seeds: list[int], progress: ProgressCallback | None
                    ) -> EnsembleResult:
    """One fit per member: each member and its History are exactly those of a lone fit."""
    models: list[SetModel] = []
    histories: list[History] = []
    for k, seed in enumerate(member_seeds):
        def member_progress(stats: EpochStats, k: int = k) -> None:
            assert progress is not None
            progress(stats._replace(member=k))

        try:
            fitted = fit(model_spec, dataset, dataclasses.replace(spec, seed=seed),
                         progress=member_progress if progress is not None else None)
        except TrainingDivergedError as error:
            raise TrainingDivergedError(f"ensemble member {k} (seed {seed}): {error}") from error
        models.append(fitted.model)
        histories.append(fitted.history)
    ensemble = Ensemble(models, member_seeds)
    ensemble.eval()
    return EnsembleResult(ensemble, histories)


@dataclass
class _StackedBatches:
    """One epoch's mini-batches of the active members: `orders` (A, n_train) is each member's
    permutation of the training bags; `values` the (n_batches, A) losses once read."""

    train: PaddedSplit
    orders: np.ndarray
    spec: TrainSpec
    device: torch.device
    values: np.ndarray | None = None

    @property
    def starts(self) -> range:
        return range(0, self.orders.shape[1], self.spec.batch_size)


def _vectorised_epoch(train_logits: Callable[..., torch.Tensor], params: Tensors,
                      buffers: Tensors, optimizer: torch.optim.Optimizer,
                      batches: _StackedBatches, weights: torch.Tensor | None,
                      spec: TrainSpec) -> np.ndarray:
    """One stacked pass over the training bags; (A,) each member's summed loss (batch mean x
    batch size). The batch losses are kept in `batches.values`."""
    orders = batches.orders
    order_rows = to_device(torch.from_numpy(orders), batches.device)
    batch_losses = []
    for start in batches.starts:
        index = orders[:, start:start + spec.batch_size]  # (A, b)
        x, mask, labels = batches.train.batch(index, order_rows[:, start:start + spec.batch_size])
        total, weight_sum, _ = loss_terms(train_logits(params, buffers, x, mask), labels, weights)
        losses = total / weight_sum  # (A,) each member's own mean loss
        batch_losses.append(losses.detach())
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        if spec.max_grad_norm is not None:
            _clip_per_member(params, spec.max_grad_norm)
        optimizer.step()
    batches.values = read_losses(batch_losses)  # (n_batches, A)
    loss_sums = np.zeros(len(orders))
    for start, batch_values in zip(batches.starts, batches.values, strict=True):
        loss_sums += batch_values * orders[:, start:start + spec.batch_size].shape[1]
    return loss_sums


def _check_losses(batches: _StackedBatches, active: np.ndarray, member_seeds: list[int],
                  epoch: int, spec: TrainSpec, dataset: SetDataset) -> None:
    """TrainingDivergedError naming the member of the first diverged batch loss."""
    assert batches.values is not None
    for batch_number, batch_values in enumerate(batches.values):
        bad = first_diverged(batch_values, spec.divergence_threshold)
        if bad is not None:
            member = int(active[bad])
            raise diverged_error(
                f"ensemble member {member} (seed {member_seeds[member]})", epoch,
                batch_number, float(batch_values[bad]), spec.divergence_threshold,
                spec.lr, count_nonfinite(dataset.train))


def _keep_best(best: Tensors, params: Tensors, buffers: Tensors, improved_rows: list[int],
               active: np.ndarray, device: torch.device) -> None:
    """Copy the improved rows' parameters and buffers into their members' best state."""
    if not improved_rows:
        return
    rows = torch.tensor(improved_rows, device=device)
    members = torch.from_numpy(active[improved_rows]).to(device)
    with torch.no_grad():
        for name, value in {**params, **buffers}.items():
            best[name][members] = value.detach()[rows]


def _stacked_forward(first: SetModel) -> tuple[SetModel, Callable[..., torch.Tensor],
                                                Callable[..., torch.Tensor]]:
    """A template copy of `first` and the vmapped logits over stacked members: for training
    (each member its own batch) and validation (one batch for all)."""
    # functional_call swaps the stacked slices into this copy; the members stay untouched.
    template = copy.deepcopy(first)
    for module in template.modules():  # fused attention has no vmap batching rule on the CPU
        if hasattr(module, "fused"):
            module.fused = False
    logits_kwargs = {"need_maps": False} if takes_need_maps(template) else {}

    def logits_of(p: Tensors, b: Tensors, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (x, mask),  # type: ignore[no-any-return]
                               logits_kwargs).logits

    return (template, vmap(logits_of, in_dims=(0, 0, 0, 0), randomness="different"),
            vmap(logits_of, in_dims=(0, 0, None, None), randomness="different"))


def _record_epoch(stopping: list[EarlyStopping], active: np.ndarray, epoch: int,
                  train_loss: np.ndarray, val_loss: np.ndarray, val_accuracy: np.ndarray,
                  seconds: float, member_seeds: list[int], spec: TrainSpec,
                  dataset: SetDataset, progress: ProgressCallback | None
                  ) -> tuple[list[int], list[int]]:
    """Each active member's epoch into its history (losses: (A,)); the rows that improved and
    the rows that stop. Raises TrainingDivergedError on a non-finite validation loss."""
    improved_rows, stopped_rows = [], []
    for row, member in enumerate(active.tolist()):
        if not math.isfinite(val_loss[row]):
            raise diverged_error(
                f"ensemble member {member} (seed {member_seeds[member]})", epoch, None,
                float(val_loss[row]), spec.divergence_threshold, spec.lr,
                count_nonfinite(dataset.val))
        improved, stop = stopping[member].record(epoch, float(train_loss[row]),
                                                 float(val_loss[row]), float(val_accuracy[row]),
                                                 seconds)
        if progress is not None:
            progress(EpochStats(epoch, float(train_loss[row]), float(val_loss[row]),
                                float(val_accuracy[row]), improved, member))
        if improved:
            improved_rows.append(row)
        if stop:
            stopped_rows.append(row)
    return improved_rows, stopped_rows


def _restore_best(models: list[SetModel], best: Tensors) -> None:
    """Load each member's best state (row k of the stacked `best`) and set eval mode."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, value in model.state_dict().items():
                value.copy_(best[name][k])
            model.eval()


def _fit_vectorised(model_spec: ModelSpec, dataset: SetDataset, spec: TrainSpec,
                    member_seeds: list[int], device: torch.device, info: InputInfo,
                    progress: ProgressCallback | None) -> EnsembleResult:
    """All members in one stacked pass under vmap (see the module docstring)."""
    n = len(member_seeds)
    # Initialised on the CPU (as fit does), so a seed starts from the same weights everywhere.
    models = [build_model(model_spec, info, seed=s).to(device) for s in member_seeds]
    template, train_logits, val_logits = _stacked_forward(models[0])
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    train = PaddedSplit.from_split(dataset.train).to(device)
    val = eval_chunks(dataset.val, spec.eval_batch_size, device)
    weights = to_device(class_weight_vector(spec.class_weights, dataset.train.labels,
                                            dataset.n_classes), device)
    order_rngs = [np.random.default_rng(s) for s in member_seeds]
    optimizer = make_optimizer(params.values(), spec)

    best = {name: t.detach().clone() for name, t in {**params, **buffers}.items()}
    histories = [History() for _ in range(n)]
    stopping = [EarlyStopping(h, spec.patience, spec.epochs) for h in histories]
    active = np.arange(n)  # member id of each stacked row
    started = time.perf_counter()
    with seeded(member_seeds[0], device), deterministic(device):
        for epoch in range(spec.epochs):
            epoch_started = time.perf_counter()
            template.train()
            orders = np.stack([order_rngs[k].permutation(len(train)) for k in active])
            batches = _StackedBatches(train, orders, spec, device)
            loss_sums = _vectorised_epoch(train_logits, params, buffers, optimizer, batches,
                                          weights, spec)
            _check_losses(batches, active, member_seeds, epoch, spec, dataset)
            template.eval()
            val_loss, val_accuracy = _evaluate_rows(val_logits, params, buffers, val, weights)
            seconds = time.perf_counter() - epoch_started
            improved_rows, stopped_rows = _record_epoch(
                stopping, active, epoch, loss_sums / len(train), val_loss, val_accuracy,
                seconds, member_seeds, spec, dataset, progress)
            _keep_best(best, params, buffers, improved_rows, active, device)
            if stopped_rows:
                keep_rows = np.setdiff1d(np.arange(len(active)), stopped_rows)
                if len(keep_rows) == 0:
                    break
                params, buffers, optimizer = _keep_rows(params, buffers, optimizer,
                                                        torch.from_numpy(keep_rows).to(device),
                                                        spec)
                active = active[keep_rows]
    wall_time = time.perf_counter() - started
    for history in histories:
        history.wall_time = wall_time
    _restore_best(models, best)
    ensemble = Ensemble(models, member_seeds)
    ensemble.eval()
    return EnsembleResult(ensemble, histories)

