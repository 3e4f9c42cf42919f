"""torchmil models as attnsets poolings, and your own torchmil model as an audit target.

Needs the extra: ``pip install 'attnsets[torchmil]'`` (torchmil >= 1.0.2).

Registration: importing this module calls `register_torchmil()`, which adds the names of
`TORCHMIL_MODELS` to POOLINGS. You need not import it: attnsets' own ``attnsets.plugins`` entry
point (`attnsets.integrations.torchmil_plugin`) does, the first time a registry is asked for a
name it lacks, in the CLI, in Python and in every study worker process:

    attnsets run configs/paper-torchmil.toml
    attnsets audit torchmil_transmil

Without torchmil installed, a ``torchmil_*`` name says which extra to install.

How a torchmil model meets our contract (`TorchmilHead`):

- It sits after our instance encoder: the encoder maps x: (B, N, *shape) to h: (B, N, D) and
  the torchmil model is built with ``in_shape=(D,)`` and no feature extractor of its own.
- torchmil models are binary and return one logit z per bag: our logits are ``[-z/2, z/2]``.
  softmax([-z/2, z/2])[1] = sigmoid(z), so cross-entropy on them is torchmil's
  BCEWithLogits, and both class logits carry gradient (gradient explainers of class 0 see -z/2).
  A dataset with more than two classes gets a SpecError at ``model.pooling``.
- Attention: torchmil returns it before normalisation (ABMIL, CLAM_SB: attention scores, made
  weights here by a softmax over the real instances) or already normalised (DSMIL: softmax
  weights; TransMIL: the class token's row of the last layer's Nystrom attention, which
  includes the padded tokens); the latter are set to 0 at padding and divided by the sum of
  their magnitudes over the real instances. Either way attention is exactly 0 at padding.
- Embeddings at padded positions are set to 0 before the model sees them (as every attnsets
  pooling does), so junk values cannot travel through. What is NOT hidden: TransMIL's forward
  takes no mask, so the padded rows still take part in its self-attention and its square
  re-padding, and its prediction changes with the amount of padding. The padding probe of the
  audit (`attnsets.models.user.probe_model`) reports that.
- Readout heads: a torchmil model ends in its own bag classifier, so the registered names refuse
  a non-default ``head`` (``[[models]] head = {...}``) with a SpecError at ``model.head``.
- Training is attnsets' own (the bag cross-entropy for every model): DSMIL's bag logit is its
  own prediction rule, the mean of the bag-classifier logit and the largest instance logit
  (so its instance classifier is trained too); CLAM_SB's instance clustering loss is not
  applied (it needs instance pseudo-labels inside the training loop), so `torchmil_clam_sb`
  is CLAM_SB's architecture trained as a bag classifier.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnsets.errors import SpecError
from attnsets.models.base import (
    DEFAULT_ENCODER,
    ENCODERS,
    POOLINGS,
    InputInfo,
    SetModel,
    SetOutput,
    construct,
    masked_softmax,
)

try:
    import torchmil.models as torchmil_models
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("attnsets.integrations.torchmil needs torchmil: "
                      "pip install 'attnsets[torchmil]'") from err

#: How a model's returned attention is turned into weights: "scores" (before normalisation:
#: softmax over the real instances) or "weights" (already normalised: renormalised over them).
ATTENTION_KINDS = ("scores", "weights")

#: Constructor arguments we always set ourselves (the encoder is ours, the loss is ours).
_OURS = ("self", "in_shape", "feat_ext", "criterion")


@dataclass(frozen=True)
class TorchmilEntry:
    """One registered torchmil model: its class in torchmil.models, the constructor arguments
    the name fixes, defaults that differ from torchmil's, arguments left out because they do
    nothing when attnsets trains the model, and how its attention is normalised."""

    model: str
    attention: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    about: str = ""


TORCHMIL_MODELS: dict[str, TorchmilEntry] = {
    "torchmil_abmil": TorchmilEntry(
        "ABMIL", "scores", fixed={"gated": False},
        about="Ilse et al. 2018 attention MIL (torchmil ABMIL)"),
    "torchmil_gated_abmil": TorchmilEntry(
        "ABMIL", "scores", fixed={"gated": True},
        about="gated attention MIL (torchmil ABMIL, gated=True)"),
    # torchmil's att_dim of 512 costs ~10x the time of the other poolings on CPU for our
    # 16-64-d instances; 64 keeps a study cell at the cost of our own transformer poolings.
    "torchmil_transmil": TorchmilEntry(
        "TransMIL", "weights", defaults={"att_dim": 64},
        about="TransMIL (Nystrom self-attention + PPEG); its forward takes no mask"),
    "torchmil_dsmil": TorchmilEntry(
        "DSMIL", "weights",
        about="dual-stream MIL: attention to the critical (top instance-logit) instance"),
    "torchmil_clam_sb": TorchmilEntry(
        "CLAM_SB", "scores", hidden=("k_sample", "inst_loss_name"),
        about="CLAM single branch, without its instance clustering loss"),
}


# --------------------------------------------------------------------------- the head


def _flat_logit(z: torch.Tensor, batch: int) -> torch.Tensor:
    """torchmil's bag logit, (B,) or (B, 1), as (B,)."""
    if z.numel() != batch:
        raise SpecError("model.forward", f"bag logits of shape {tuple(z.shape)}",
                        f"one logit per bag ({batch},): torchmil models are binary")
    return z.reshape(batch)


class TorchmilHead(nn.Module):
    """A torchmil model as a pooling: forward(h: (B, N, D), mask: (B, N) bool) -> SetOutput
    with logits (B, 2) = [-z/2, z/2] and attention (B, N), 0 at padding (see the module
    docstring). attention: "scores" or "weights" (ATTENTION_KINDS)."""

    def __init__(self, module: nn.Module, attention: str = "scores") -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise SpecError("attention", attention, f"one of {list(ATTENTION_KINDS)}")
        self.module = module
        self.attention_kind = attention
        parameters = inspect.signature(module.forward).parameters
        # Decided once here: vmap (the vectorised ensemble) allows no data-dependent branches.
        self.takes_mask = "mask" in parameters
        self.returns_attention = "return_att" in parameters
        self.dsmil = isinstance(module, torchmil_models.DSMIL)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        batch = h.shape[0]
        h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        args: tuple[Any, ...] = (h, mask) if self.takes_mask else (h,)
        if self.dsmil:
            bag_logit, attention, instance_logits = self.module(
                *args, return_att=True, return_inst_pred=True)
            top = instance_logits.reshape(batch, -1).masked_fill(~mask, float("-inf")).amax(-1)
            top = torch.where(mask.any(-1), top, torch.zeros_like(top))
            z = 0.5 * (_flat_logit(bag_logit, batch) + top)
        elif self.returns_attention:
            bag_logit, attention = self.module(*args, return_att=True)
            z = _flat_logit(bag_logit, batch)
        else:
            output = self.module(*args)
            bag_logit = output[0] if isinstance(output, tuple | list) else output
            z, attention = _flat_logit(bag_logit, batch), None
        logits = torch.stack([-0.5 * z, 0.5 * z], dim=-1)
        if attention is None:
            return SetOutput(logits)
        if attention.numel() != mask.numel():
            raise SpecError("model.forward", f"attention of shape {tuple(attention.shape)}",
                            f"one attention value per instance {tuple(mask.shape)}")
        attention = attention.reshape(mask.shape)
        if self.attention_kind == "scores":
            weights = masked_softmax(attention, mask)
        else:
            kept = torch.where(mask, attention, torch.zeros_like(attention))
            # Magnitudes, not values: Nystrom attention can be slightly negative.
            weights = kept / kept.abs().sum(-1, keepdim=True).clamp_min(1e-12)
        return SetOutput(logits, weights)


# --------------------------------------------------------------------------- registration


def _require_binary(name: str, n_classes: int, field_name: str) -> None:
    if n_classes != 2:
        raise SpecError(field_name, name,
                        f"a binary dataset: torchmil models return one logit per bag (binary "
                        f"MIL only), and this dataset has {n_classes} classes")


def _parameters(entry: TorchmilEntry) -> list[inspect.Parameter]:
    """The constructor parameters a user may set in ``pooling_params``, with our defaults."""
    cls = getattr(torchmil_models, entry.model)
    out = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in _OURS or name in entry.fixed or name in entry.hidden \
                or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = entry.defaults.get(name, param.default)
        out.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=inspect.Parameter.empty))
    return out


def _factory(name: str, entry: TorchmilEntry) -> Callable[..., TorchmilHead]:
    """A pooling factory ``(in_dim, n_classes, **torchmil parameters) -> TorchmilHead`` whose
    signature lists the torchmil parameters, so that ModelSpec.check validates their names."""
    cls = getattr(torchmil_models, entry.model)

    def make(in_dim: int, n_classes: int, **params: Any) -> TorchmilHead:
        _require_binary(name, n_classes, "model.pooling")
        kwargs = {**entry.defaults, **params, **entry.fixed}
        try:
            module = cls(in_shape=(in_dim,), **kwargs)
        except (AssertionError, ValueError, RuntimeError) as err:
            # torchmil checks some values with assert (TransMIL: n_layers >= 2).
            raise SpecError("model.pooling_params", params,
                            f"valid {entry.model} parameters ({type(err).__name__}: {err})"
                            ) from None
        return TorchmilHead(module, entry.attention)

    positional = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int)
                  for p in ("in_dim", "n_classes")]
    make.__signature__ = inspect.Signature([*positional, *_parameters(entry)])  # type: ignore[attr-defined]
    make.__name__ = make.__qualname__ = name
    # the torchmil model ends in its own classifier, so an attnsets readout head has no place
    make.accepts_head = False  # type: ignore[attr-defined]
    make.head_refusal = (f"torchmil's {entry.model} ends in its own bag classifier (set its "  # type: ignore[attr-defined]
                         "width through its own pooling_params)")
    make.__doc__ = f"{entry.about}. torchmil.models.{entry.model} behind TorchmilHead."
    return make


def register_torchmil(overwrite: bool = False) -> list[str]:
    """Register every TORCHMIL_MODELS name as a pooling; names already registered are kept
    unless `overwrite`. Returns the names registered by this call (importing the module calls
    it once)."""
    added = []
    for name, entry in TORCHMIL_MODELS.items():
        if name in POOLINGS and not overwrite:
            continue
        POOLINGS.register(name, overwrite=overwrite)(_factory(name, entry))
        added.append(name)
    return added


# --------------------------------------------------------------------------- your own model


def _attention_kind(module: nn.Module) -> str:
    """torchmil's convention is attention before normalisation; DSMIL and TransMIL return
    normalised weights."""
    normalised = (torchmil_models.DSMIL, torchmil_models.TransMIL)
    return "weights" if isinstance(module, normalised) else "scores"


def torchmil_builder(model: type[nn.Module] | Callable[..., nn.Module] | nn.Module, *,
                     attention: str | None = None, encoder: str | None = None,
                     embed_dim: int = 32, encoder_params: Mapping[str, Any] | None = None,
                     **kwargs: Any) -> Callable[[InputInfo, int], SetModel]:
    """A model builder ``(info, seed) -> SetModel`` for `attnsets.audit.audit` (or a RunSpec)
    around your own torchmil model: our encoder (`encoder`, default for the data kind) maps
    instances to h: (B, N, embed_dim), your model pools them.

    model: a torchmil model class or factory, called as ``model(in_shape=(embed_dim,),
    **kwargs)`` (without in_shape if it takes none); or an instance, deep-copied per member and
    re-initialised with the member's seed (every submodule with ``reset_parameters``); it must
    take embed_dim features. attention: "scores" / "weights" (default: "weights" for DSMIL and
    TransMIL and their subclasses, else "scores", torchmil's convention).

    >>> from attnsets.integrations.torchmil import torchmil_builder
    >>> from torchmil.models import ABMIL
    >>> audit(torchmil_builder(ABMIL, att_dim=64))
    """
    if attention is not None and attention not in ATTENTION_KINDS:
        raise SpecError("attention", attention, f"None or one of {list(ATTENTION_KINDS)}")
    if isinstance(model, nn.Module) and kwargs:
        raise SpecError("kwargs", sorted(kwargs), "no constructor arguments with a model "
                                                  "instance (pass its class instead)")
    if not isinstance(model, nn.Module) and not callable(model):
        raise SpecError("model", type(model).__name__,
                        "a torchmil model class, a factory or an nn.Module instance")
    label = getattr(model, "__name__", type(model).__name__)

    def build(info: InputInfo, seed: int) -> SetModel:
        # build_member seeds torch with `seed` around this call: the re-initialisation below
        # and the encoder's initial weights differ per member.
        _require_binary(label, info.n_classes, "model_builder")
        encoder_name = encoder or DEFAULT_ENCODER.get(info.kind)
        if encoder_name is None:
            raise SpecError("encoder", None, f"an encoder name for data kind {info.kind!r}")
        instance_encoder = construct(ENCODERS.get(encoder_name, "encoder"), "encoder_params",
                                     {"info": info, "out_dim": embed_dim},
                                     dict(encoder_params or {}))
        if isinstance(model, nn.Module):
            module = copy.deepcopy(model)
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
        else:
            try:
                takes_shape = "in_shape" in inspect.signature(model).parameters
            except (TypeError, ValueError):
                takes_shape = False
            module = model(in_shape=(embed_dim,), **kwargs) if takes_shape else model(**kwargs)
        head = TorchmilHead(module, attention or _attention_kind(module))
        return SetModel(instance_encoder, head, None, info)

    build.__qualname__ = build.__name__ = f"torchmil_builder({label})"
    return build


register_torchmil()
