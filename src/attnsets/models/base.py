"""Set models = instance encoder + pooling block, with one output contract for every model.

Every model maps ``x: (B, N, *instance_shape)`` and ``mask: (B, N) bool`` (True = real instance)
to a SetOutput. Padded positions get exactly zero attention and cannot change any output.
Models must stay `torch.func.vmap`-compatible (no in-place ops on inputs, no `.item()`,
no data-dependent Python control flow) so ensembles can train in one vectorised pass.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from attnsets.errors import SpecError
from attnsets.registry import Registry
from attnsets.spec.constraints import Interval

ENCODERS: Registry[Any] = Registry("encoder")
POOLINGS: Registry[Any] = Registry("pooling")

#: The encoder used for each pool kind when the spec does not name one.
DEFAULT_ENCODER = {"vector": "mlp", "image": "cnn", "sequence": "seq_cnn"}


class SetOutput(NamedTuple):
    """logits: (B, C). attention: (B, N), mean over heads, 0 at padding (None if the pooling has
    none). head_attention: (B, H, N). attention_norm: (B, N) attention x norm of the transformed
    instance (Kobayashi et al. 2020). instance_scores: (B, N, C) per-instance class contributions
    (additive / instance_max). layer_attention: per layer (B, H, T, T) token-to-token attention
    for rollout (transformer poolings; token 0 is the class token where there is one)."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    head_attention: torch.Tensor | None = None
    attention_norm: torch.Tensor | None = None
    instance_scores: torch.Tensor | None = None
    layer_attention: tuple[torch.Tensor, ...] | None = None

    def present(self) -> dict[str, Any]:
        """The fields that are not None. torch.func.vmap refuses None in outputs, so a vmapped
        function returns ``model(x, mask).present()`` (or just the logits)."""
        return {name: value for name, value in self._asdict().items() if value is not None}


@dataclass(frozen=True)
class InputInfo:
    """What an encoder needs to know about the data."""

    kind: str  # "vector" | "image" | "sequence"
    instance_shape: tuple[int, ...]
    n_classes: int
    vocab_size: int = 0

    @staticmethod
    def from_dataset(dataset: Any) -> InputInfo:
        return InputInfo(dataset.kind, tuple(dataset.instance_shape), dataset.n_classes,
                         dataset.vocab_size)


@dataclass(frozen=True)
class HeadSpec:
    """The readout after pooling: [Linear(in, h_1), ReLU, Dropout(dropout)] for each width h_k
    of `hidden`, then Linear(h_k, n_classes). The default (no hidden layer) is one Linear layer,
    the readout every pooling had before heads existed.

    Why it matters: after one softmax attention head a linear readout makes the bag logit an
    attention-weighted average of per-instance logits (a count, not a conjunction); a hidden
    layer after pooling can represent "A and B" (docs/concepts.md)."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        hidden = self.hidden
        if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
            raise SpecError("head.hidden", hidden, "a list of hidden widths, integers >= 1 "
                            "(e.g. [64]; [] for a single linear layer)")
        object.__setattr__(self, "hidden", tuple(require_int("head.hidden", w) for w in hidden))
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= float(dropout) < 1.0:
            raise SpecError("head.dropout", dropout, "a number in [0, 1)")
        if dropout and not self.hidden:
            raise SpecError("head.dropout", dropout, "0 when head.hidden is empty (dropout "
                            "follows each hidden layer; a single linear layer has none)")
        object.__setattr__(self, "dropout", float(dropout))

    @property
    def is_linear(self) -> bool:
        """True for the default: one Linear layer from the pooled embedding to the logits."""
        return not self.hidden

    @staticmethod
    def from_value(value: Any) -> HeadSpec:
        """A HeadSpec from a HeadSpec or a config table ``{hidden = [64], dropout = 0.15}``;
        SpecError at ``head`` / ``head.<key>`` otherwise."""
        if isinstance(value, HeadSpec):
            return value
        if not isinstance(value, Mapping):
            raise SpecError("head", value, "a table {hidden = [widths], dropout = p}")
        allowed = ["hidden", "dropout"]
        for key in value:
            if key not in allowed:
                raise SpecError(f"head.{key}", value[key], f"parameters {allowed}")
        return HeadSpec(**value)

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "dropout": self.dropout}


@dataclass(frozen=True)
class ModelSpec:
    """pooling / encoder: registered names; *_params: their parameters. encoder=None picks the
    default for the data kind. embed_dim: width of the instance embedding h: (B, N, embed_dim).
    head: the readout after pooling (HeadSpec; a config table ``{hidden = [64], dropout = 0.15}``
    is accepted); poolings that score instances refuse any but the default."""

    pooling: str = "attention"
    encoder: str | None = None
    embed_dim: int = 64
    pooling_params: dict[str, Any] = field(default_factory=dict)
    encoder_params: dict[str, Any] = field(default_factory=dict)
    #: Parameters per encoder name, used only when that encoder is picked: one model entry can
    #: serve vector, image and sequence datasets (e.g. {"cnn": {"channels": [8, 16]}}).
    per_encoder: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: HeadSpec = HeadSpec()

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", HeadSpec.from_value(self.head))
        Interval(int, 1).require(self.embed_dim, "embed_dim")
        for name, params in self.per_encoder.items():
            if name not in ENCODERS:
                raise SpecError(f"per_encoder.{name}", params, f"encoder names {ENCODERS.names()}")
            if not isinstance(params, dict):
                raise SpecError(f"per_encoder.{name}", params, "a table of encoder parameters")

    def check(self) -> list[SpecError]:
        """Problems found without the data: unknown encoder / pooling names and parameter names
        they do not take (values are checked by building the model for its data)."""
        errors: list[SpecError] = []
        checks = [("encoder", "encoder_params", ENCODERS, self.encoder, self.encoder_params),
                  ("pooling", "pooling_params", POOLINGS, self.pooling, self.pooling_params)]
        checks += [(f"per_encoder.{name}", f"per_encoder.{name}", ENCODERS, name, params)
                   for name, params in self.per_encoder.items()]
        for field_name, params_field, registry, name, params in checks:
            if name is None:
                continue
            if name not in registry:
                errors.append(registry.unknown(name, field_name))
                continue
            allowed = [p for p in inspect.signature(registry.get(name)).parameters
                       if p not in FIXED_PARAMETERS]
            errors += [SpecError(f"{params_field}.{param}", value, f"parameters {allowed}")
                       for param, value in params.items() if param not in allowed]
        if self.pooling in POOLINGS:
            problem = head_problem(POOLINGS.get(self.pooling), self.pooling, self.head)
            errors += [problem] if problem is not None else []
        return errors

    def to_dict(self) -> dict[str, Any]:
        data = {"pooling": self.pooling, "encoder": self.encoder, "embed_dim": self.embed_dim,
                "pooling_params": dict(self.pooling_params),
                "encoder_params": dict(self.encoder_params),
                "per_encoder": {k: dict(v) for k, v in self.per_encoder.items()}}
        # Absent at the default, so checkpoints and records written before heads stay equal.
        if self.head != HeadSpec():
            data["head"] = self.head.to_dict()
        return data


#: Constructor arguments build_model passes itself (never read from *_params).
FIXED_PARAMETERS = ("info", "out_dim", "in_dim", "n_classes", "head")


def head_problem(pooling_factory: Any, name: str, head: HeadSpec) -> SpecError | None:
    """A SpecError at ``head`` if the pooling cannot take `head`, else None.

    The capability is the pooling's class attribute ``accepts_head`` (True: its constructor
    takes ``head: HeadSpec`` and reads the pooled embedding through it); poolings without it
    take only the default head. ``head_refusal`` may say why a pooling refuses one."""
    if head == HeadSpec() or getattr(pooling_factory, "accepts_head", False):
        return None
    reason = getattr(pooling_factory, "head_refusal",
                     "it does not declare accepts_head = True")
    accepting = [n for n, f in POOLINGS.items() if getattr(f, "accepts_head", False)]
    return SpecError("head", head.to_dict(),
                     f"the default head (one linear layer) for pooling {name!r}: {reason}; "
                     f"poolings that take a head: {accepting}")


class SetModel(nn.Module):
    """encoder: (B, N, *shape) -> (B, N, D); pooling: (h, mask) -> SetOutput."""

    def __init__(self, encoder: nn.Module, pooling: nn.Module, spec: ModelSpec | None = None,
                 info: InputInfo | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.spec = spec
        self.info = info

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, *shape) -> h: (B, N, D); each instance encoded independently."""
        batch, n = x.shape[:2]
        h = self.encoder(x.reshape(batch * n, *x.shape[2:]))
        return h.reshape(batch, n, -1)

    def head(self, h: torch.Tensor, mask: torch.Tensor, need_maps: bool = True) -> SetOutput:
        """h: (B, N, D), mask: (B, N) bool -> SetOutput.

        need_maps=False promises the caller reads only ``.logits`` (perturbation passes): a
        pooling with a ``forward_logits(h, mask) -> (B, C)`` method then skips its diagnostic
        maps and may use fused kernels; the other fields of the result are None."""
        if not need_maps:
            fast = getattr(self.pooling, "forward_logits", None)
            if fast is not None:
                return SetOutput(fast(h, mask))
        return self.pooling(h, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_maps: bool = True) -> SetOutput:
        """x: (B, N, *shape), mask: (B, N) bool. need_maps=False: only ``.logits`` is read
        (training, prediction), see head."""
        return self.head(self.encode(x), mask, need_maps)


def takes_need_maps(model: nn.Module, through: tuple[str, ...] = ("forward", "head")) -> bool:
    """Whether `model` is a SetModel whose methods `through` (those a caller goes through)
    accept ``need_maps`` (a subclass may have overridden one with the older signature)."""
    kind = type(model)
    return issubclass(kind, SetModel) and all(
        "need_maps" in inspect.signature(getattr(kind, name)).parameters for name in through)


def logits_only(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """model(x, mask).logits: (B, C), computed without the diagnostic maps where the model can
    (training and prediction read nothing else; on self-attention poolings the maps are most
    of the cost, O(N^2) per layer and, for set_transformer, the only quadratic part)."""
    if takes_need_maps(model):
        return model(x, mask, need_maps=False).logits  # type: ignore[no-any-return]
    return model(x, mask).logits  # type: ignore[no-any-return]


def build_model(spec: ModelSpec, info: InputInfo, seed: int | None = None) -> SetModel:
    """Instantiate encoder + pooling; `seed` makes the initial weights reproducible.

    Unknown or bad parameters raise SpecError at ``model.encoder_params.<name>`` /
    ``model.pooling_params.<name>``."""
    encoder_name = spec.encoder or DEFAULT_ENCODER.get(info.kind)
    if encoder_name is None:
        raise SpecError("model.encoder", None, f"an encoder name for data kind {info.kind!r}")
    encoder_cls = ENCODERS.get(encoder_name, "model.encoder")
    pooling_cls = POOLINGS.get(spec.pooling, "model.pooling")
    problem = head_problem(pooling_cls, spec.pooling, spec.head)
    if problem is not None:
        raise problem.with_prefix("model")
    pooling_fixed: dict[str, Any] = {"in_dim": spec.embed_dim, "n_classes": info.n_classes}
    if getattr(pooling_cls, "accepts_head", False):
        pooling_fixed["head"] = spec.head
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        params = {**spec.per_encoder.get(encoder_name, {}), **spec.encoder_params}
        encoder = construct(encoder_cls, "model.encoder_params",
                            {"info": info, "out_dim": spec.embed_dim}, params)
        pooling = construct(pooling_cls, "model.pooling_params", pooling_fixed,
                            spec.pooling_params)
    return SetModel(encoder, pooling, spec, info)


def construct(factory: Any, field: str, fixed: dict[str, Any], params: dict[str, Any]) -> Any:
    """factory(**fixed, **params) with every problem reported as a SpecError under `field`.

    Errors the factory raises about its own parameters (field ``heads``) are nested under
    `field`; errors that already name a top-level field (``model.*``, ``data.*``) pass through."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        signature = None
    if signature is not None and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        allowed = [name for name in signature.parameters if name not in fixed]
        for name in params:
            if name not in allowed:
                raise SpecError(f"{field}.{name}", params[name], f"parameters {allowed}")
    try:
        return factory(**fixed, **params)
    except SpecError as err:
        if err.field.startswith(("model.", "data.")):
            raise
        raise err.with_prefix(field) from None
    except TypeError as err:
        raise SpecError(field, params, str(err)) from None


def require_int(field: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else SpecError(field, ...). Booleans are rejected."""
    return int(Interval(int, minimum).require(value, field))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over real instances only; padded positions get exactly 0.
    scores: (..., N), mask broadcastable to scores."""
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    # A row with no real instance would be NaN; make it 0 instead.
    return torch.where(mask, weights, torch.zeros_like(weights))
