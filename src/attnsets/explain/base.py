"""One interface for every instance-importance method: ``explain(model, batch, method)``.

An explainer maps a padded batch to scores ``(B, N)``: one importance per instance for a target
class, exactly 0 at padded positions. Scores are returned as a detached float32 torch tensor on the
batch's device (``np.asarray(scores.cpu())`` gives numpy). Metrics must still select real
instances with ``batch.mask``: a 0 at padding is not a statement about importance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

from attnsets.data.bags import Batch
from attnsets.errors import SpecError
from attnsets.models.base import InputInfo, SetModel, SetOutput
from attnsets.registry import Registry
from attnsets.spec.constraints import Interval, is_int

#: SetOutput fields an explainer can require; each is None for poolings that lack it.
OUTPUT_FIELDS = ("attention", "head_attention", "attention_norm", "instance_scores",
                 "layer_attention")

#: Other names accepted by `explain` for a registered method (not listed twice).
ALIASES = {"additive": "instance_scores", "saliency": "gradient"}


@dataclass
class ExplainContext:
    """What an explainer gets: the model (in eval mode), the batch and the resolved target.

    x: (B, N, *shape); mask: (B, N) bool; target: (B,) int64 class per bag.
    `output` is the model's SetOutput on the full batch and `embedding` its encoding
    h: (B, N, D), each computed once without gradients.
    """

    model: SetModel
    batch: Batch
    target: torch.Tensor
    method: str = ""

    @property
    def x(self) -> torch.Tensor:
        return self.batch.x

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.mask

    @cached_property
    def output(self) -> SetOutput:
        with torch.no_grad():
            return self.model.head(self.embedding, self.mask)

    @cached_property
    def embedding(self) -> torch.Tensor:
        """h = model.encode(x): (B, N, D), computed once without gradients. Encodings are per
        instance, so perturbations of the instance set only need model.head(h, mask)."""
        with torch.no_grad():
            return self.model.encode(self.x)

    @property
    def pooling_name(self) -> str:
        return pooling_name(self.model)


class ExplainFn(Protocol):
    def __call__(self, context: ExplainContext, /, **options: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Explainer:
    """A registered method. fn(context, **options) -> (B, N) scores.

    requires: SetOutput fields that must be present (see OUTPUT_FIELDS).
    check: optional further test; returns None if the method applies, else the reason it does not.
    options: the keyword options fn takes (("**",) when it takes any); read from fn's signature.
    takes_seed: fn has a `seed` option (a stochastic method): callers that explain several
    members give member i the seed ``seed + i`` instead of asking for the method by name.
    expensive: its cost grows much faster than one forward pass (perturbations re-run the head
    on every sub-bag, integrated gradients runs many passes): an assessment's `bag_budget`
    limits the test bags it scores.
    """

    fn: ExplainFn
    requires: tuple[str, ...] = ()
    check: Callable[[SetModel, SetOutput], str | None] | None = None
    description: str = ""
    expensive: bool = False
    options: tuple[str, ...] = field(init=False, default=())
    takes_seed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.requires) - set(OUTPUT_FIELDS))
        if unknown:
            raise SpecError("requires", unknown[0], f"SetOutput fields {list(OUTPUT_FIELDS)}")
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            names: tuple[str, ...] = ("**",)
        else:
            names = tuple(p.name for p in params)
        object.__setattr__(self, "options", names)
        object.__setattr__(self, "takes_seed", "seed" in names)

    def reason_not_applicable(self, model: SetModel, output: SetOutput) -> str | None:
        """None if this method applies to `model` (whose output on some input is `output`)."""
        for name in self.requires:
            if getattr(output, name) is None:
                return f"pooling {pooling_name(model)!r} gives no {name}"
        return self.check(model, output) if self.check is not None else None


EXPLAINERS: Registry[Explainer] = Registry("explainer")


def register_explainer(name: str, *, requires: Sequence[str] = (),
                       check: Callable[[SetModel, SetOutput], str | None] | None = None,
                       description: str = "", overwrite: bool = False,
                       expensive: bool = False) -> Callable[[ExplainFn], ExplainFn]:
    """Decorator: register ``fn(context, **options) -> (B, N)`` as method `name`.

    >>> @register_explainer("feature0")
    ... def feature0(context):
    ...     return context.x[..., 0].float()
    """

    def decorator(fn: ExplainFn) -> ExplainFn:
        explainer = Explainer(fn, tuple(requires), check, description or (fn.__doc__ or ""),
                              expensive)
        EXPLAINERS.register(name, overwrite=overwrite)(explainer)
        return fn

    return decorator


def pooling_name(model: SetModel) -> str:
    """The pooling's registered name if the model was built from a spec, else its class name."""
    spec = getattr(model, "spec", None)
    return spec.pooling if spec is not None else type(model.pooling).__name__


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Explain with dropout off and batch statistics frozen; restore the caller's mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_target(target: int | Sequence[int] | np.ndarray | torch.Tensor | None, batch: Batch,
                   n_classes: int) -> torch.Tensor:
    """(B,) int64 target classes. None: batch.target (the bag's true label unless the batch was
    collated for another class, so scores and batch.evidence refer to the same class)."""
    n_bags = len(batch)
    if target is None:
        resolved = batch.target.to(torch.int64)
    elif is_int(target):
        resolved = torch.full((n_bags,), int(target), dtype=torch.int64)
    else:
        resolved = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor)
                                   else target)
        if resolved.dtype.is_floating_point or resolved.dtype == torch.bool \
                or resolved.shape != (n_bags,):
            raise SpecError("target", target, f"None, an int class, or ({n_bags},) int classes")
        resolved = resolved.to(torch.int64)
    if n_bags and (int(resolved.min()) < 0 or int(resolved.max()) >= n_classes):
        raise SpecError("target", resolved.tolist(), f"classes 0..{n_classes - 1}")
    return resolved.to(batch.mask.device)


def resolve_method(method: str) -> tuple[str, Explainer]:
    name = ALIASES.get(method, method)
    if name not in EXPLAINERS:
        unknown = EXPLAINERS.unknown(method, "method")
        raise SpecError("method", method, f"{unknown.allowed} (aliases: {sorted(ALIASES)})")
    return name, EXPLAINERS.get(name)


def check_options(name: str, explainer: Explainer, options: Mapping[str, Any],
                  field: str | None = None) -> None:
    """SpecError at `field` (default ``explain.<name>``) + ``.<option>`` for an option the
    method does not take."""
    if "**" in explainer.options:
        return
    unknown = sorted(set(options) - set(explainer.options))
    if unknown:
        raise SpecError(f"{field or f'explain.{name}'}.{unknown[0]}", options[unknown[0]],
                        f"options of {name!r}: {list(explainer.options)}")


def explain(model: SetModel, batch: Batch, method: str, /,
            target: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
            **options: Any) -> torch.Tensor:
    """Per-instance importance for `target`: (B, N) float32, exactly 0 where batch.mask is False.

    target: None = batch.target (the true label by default), an int, or (B,) classes.
    options: method-specific (see docs/explainers.md), e.g. head=, n_steps=, n_samples=, seed=.
    `model`, `batch` and `method` are positional-only, so an option may share their names
    (integrated gradients' integration rule is the option ``method=``).
    Raises SpecError if the method is unknown, an option is unknown, or the method does not
    apply to this model's pooling.
    """
    name, explainer = resolve_method(method)
    check_options(name, explainer, options)
    with eval_mode(model):
        context = ExplainContext(model, batch, torch.zeros(0, dtype=torch.int64), name)
        context.target = resolve_target(target, batch, int(context.output.logits.shape[-1]))
        reason = explainer.reason_not_applicable(model, context.output)
        if reason is not None:
            raise SpecError("method", name, f"a method that applies to this model ({reason}); "
                            f"methods for it: {methods_for(model, context.output)}")
        scores = explainer.fn(context, **options)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(batch.mask.shape):
        shape = tuple(scores.shape) if hasattr(scores, "shape") else type(scores).__name__
        raise SpecError("method", name, f"an explainer returning {tuple(batch.mask.shape)} "
                        f"scores; it returned {shape}")
    scores = scores.detach().to(device=batch.mask.device, dtype=torch.float32)
    return torch.where(batch.mask, scores, torch.zeros_like(scores))


def explain_ensemble(members: Sequence[SetModel], batch: Batch, method: str, /,
                     target: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
                     **options: Any) -> torch.Tensor:
    """(K, B, N): `explain` for each of the K members, stacked (combine with e.g. .mean(0))."""
    if len(members) == 0:
        raise SpecError("members", [], "at least one SetModel")
    return torch.stack([explain(m, batch, method, target, **options) for m in members])


def methods_for(model: SetModel, output: SetOutput) -> list[str]:
    return [name for name, explainer in EXPLAINERS.items()
            if explainer.reason_not_applicable(model, output) is None]


def dummy_input(info: InputInfo, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-instance dummy bag for data described by `info`: x: (1, 2, *shape) zeros (token
    ids for sequences), mask: (1, 2) all True."""
    dtype = torch.int64 if info.kind == "sequence" else torch.float32
    x = torch.zeros((1, 2, *info.instance_shape), dtype=dtype, device=device)
    return x, torch.ones((1, 2), dtype=torch.bool, device=device)


def probe_input(model: SetModel) -> tuple[torch.Tensor, torch.Tensor]:
    """`dummy_input` built from model.info, on the model's device."""
    info = getattr(model, "info", None)
    if info is None:
        raise SpecError("batch", None, "a Batch to probe the model with (model.info is missing)")
    return dummy_input(info, next(iter(model.parameters()), torch.zeros(0)).device)


def available_methods(model: SetModel, batch: Batch | None = None) -> list[str]:
    """Names of the registered methods that apply to `model` (probed on `batch` or a dummy bag)."""
    if batch is not None:
        x, mask = batch.x[:1], batch.mask[:1]
    else:
        x, mask = probe_input(model)
    with eval_mode(model), torch.no_grad():
        output = model(x, mask)
    return methods_for(model, output)


def masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scores with padded positions set to exactly 0 (also clears NaN/inf there)."""
    return torch.where(mask, scores, torch.zeros_like(scores))


def target_values(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """logits: (M, C), target: (M,) -> (M,) target probability ("prob") or logit ("logit")."""
    if output == "prob":
        return torch.softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
    if output == "logit":
        return logits.gather(-1, target[:, None]).squeeze(-1)
    raise SpecError("output", output, "'prob' (softmax probability) or 'logit'")


def check_positive_int(name: str, value: Any) -> int:
    return int(Interval(int, 1).require(value, name))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Bijective 64-bit finaliser: turns structured integers into well-mixed bits."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def instance_uniforms(x: torch.Tensor, seed: int, n_streams: int = 1) -> torch.Tensor:
    """Deterministic uniforms in [0, 1) that depend only on (seed, instance content, stream).

    x: (B, N, *shape) -> (B, N, n_streams) float64. Because a value is a hash of the instance
    itself, not of its position, random scores and random orders are the same for a bag
    whether it is alone or padded among others, and follow the instances when they are
    permuted. Identical instances get identical values.
    """
    n_bags, n = x.shape[:2]
    flat = x.detach().cpu().reshape(n_bags * n, -1)
    if flat.dtype.is_floating_point:
        words = flat.to(torch.float64).numpy().view(np.uint64)
    else:
        words = flat.to(torch.int64).numpy().view(np.uint64)
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(0, np.iinfo(np.uint64).max, size=words.shape[1],
                               dtype=np.uint64, endpoint=True) | np.uint64(1)
    seed_word = rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
    with np.errstate(over="ignore"):
        # Multiply-sum over feature words (wrapping mod 2^64) is a universal hash of the instance.
        digest = _splitmix64((words * multipliers).sum(axis=1, dtype=np.uint64) ^ seed_word)
        streams = np.arange(1, n_streams + 1, dtype=np.uint64) * _GOLDEN
        bits = _splitmix64(digest[:, None] ^ streams[None, :])
    uniforms = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy(uniforms.reshape(n_bags, n, n_streams)).to(x.device)
