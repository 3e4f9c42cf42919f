"""Your own set model behind the SetModel contract: a builder ``(info, seed) -> nn.Module``
whose ``forward(x, mask)`` returns a SetOutput, ``(logits, attention)`` or logits, wrapped so that
training, explainers and assessments can use it, and probed on real bags before any training
(output shapes, attention at padding, predictions that change with the padding)."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnsets.data.bags import collate
from attnsets.data.generate import SetDataset
from attnsets.errors import DataFormatError, SpecError
from attnsets.models.base import POOLINGS, InputInfo, ModelSpec, SetModel, SetOutput

#: A user builder: (InputInfo, member seed) -> a module following the SetModel contract.
ModelBuilder = Callable[[InputInfo, int], nn.Module]

PADDING_ATTENTION_TOLERANCE = 1e-6
#: A change of any class probability above this when only the padding changes is reported.
PADDING_PROBABILITY_TOLERANCE = 1e-4


class UserModel(SetModel):
    """A user module behind the SetModel interface, so that fit, assess and the explainers can
    use it. encode is the identity (the user's module sees the raw x: (B, N, *shape)); head runs
    the user's forward and turns its output into a SetOutput."""

    def __init__(self, module: nn.Module, info: InputInfo) -> None:
        super().__init__(nn.Identity(), _OutputAdapter(module), None, info)

    @property
    def module(self) -> nn.Module:
        return self.pooling.module  # type: ignore[no-any-return]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _OutputAdapter(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        return as_set_output(self.module(x, mask))


def as_set_output(output: Any, where: str = "model output") -> SetOutput:
    """A SetOutput from what a user forward returned: a SetOutput, (logits,), (logits,
    attention) or a logits tensor. Types are checked here, shapes by `probe_model`."""
    if isinstance(output, SetOutput):
        return output
    if isinstance(output, torch.Tensor):
        return SetOutput(output)
    if isinstance(output, tuple | list) and len(output) in (1, 2):
        logits = output[0]
        attention = output[1] if len(output) == 2 else None
        if not isinstance(logits, torch.Tensor) or not (
                attention is None or isinstance(attention, torch.Tensor)):
            raise SpecError(where, _describe(output),
                            "(logits tensor (B, C), attention tensor (B, N) or None)")
        return SetOutput(logits, attention)
    raise SpecError(where, _describe(output),
                    "a SetOutput, a tuple (logits (B, C), attention (B, N) or None), or logits")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"{type(value).__name__} of ({', '.join(_describe(v) for v in value)})"
    return type(value).__name__


def build_member(builder: ModelBuilder, info: InputInfo, seed: int) -> SetModel:
    """Call the user's builder with torch seeded by `seed`; check it made a trainable module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = builder(info, seed)
        except SpecError:
            raise
        except Exception as err:
            raise SpecError("model_builder", f"{type(err).__name__}: {err}",
                            f"a builder callable as builder(info, seed) with info={info}"
                            ) from err
    if not isinstance(module, nn.Module):
        raise SpecError("model_builder", type(module).__name__,
                        "a builder returning a torch.nn.Module (it returned something else)")
    if not any(p.requires_grad for p in module.parameters()):
        raise SpecError("model_builder", type(module).__name__,
                        "a module with trainable parameters")
    if isinstance(module, SetModel):
        return module
    return UserModel(module, info)


@dataclass(frozen=True)
class ProbeReport:
    """What a forward pass on a few real bags showed (before any training).

    output_kind: "SetOutput" | "tuple" | "logits"; has_attention: the model returns attention;
    padding_attention_max: largest |attention| at a padded position (should be 0);
    padding_probability_change: largest change of a class probability when the padding is
    widened and filled with junk values (should be 0)."""

    output_kind: str
    has_attention: bool
    padding_attention_max: float
    padding_probability_change: float

    @property
    def attention_at_padding(self) -> bool:
        return self.padding_attention_max > PADDING_ATTENTION_TOLERANCE

    @property
    def padding_changes_output(self) -> bool:
        return not self.padding_probability_change <= PADDING_PROBABILITY_TOLERANCE

    @property
    def respects_padding(self) -> bool:
        return not (self.attention_at_padding or self.padding_changes_output)

    def problems(self) -> list[str]:
        out = []
        if self.attention_at_padding:
            out.append(f"attention at padded positions (max {self.padding_attention_max:.3g}, "
                       "should be 0)")
        if self.padding_changes_output:
            out.append(f"the padding changes the prediction (class probability moves by up to "
                       f"{self.padding_probability_change:.3g})")
        return out


def _output_kind(raw: Any) -> str:
    if isinstance(raw, SetOutput):
        return "SetOutput"
    return "logits" if isinstance(raw, torch.Tensor) else "tuple"


def _probe_bags(dataset: SetDataset, n_bags: int) -> list[Any]:
    """A few train bags of different sizes (the smallest and largest first)."""
    split = dataset.train
    order = np.argsort(split.sizes, kind="stable")
    picks = [int(order[0]), int(order[-1]), *[int(i) for i in order[1:-1]][: max(0, n_bags - 2)]]
    return [split[i] for i in dict.fromkeys(picks)]


def _junk_padding(x: torch.Tensor, mask: torch.Tensor, vocab_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """x with every padded instance replaced by junk: large normals, or random tokens."""
    pad = ~mask
    if x.dtype.is_floating_point:
        junk = torch.randn(x.shape, generator=generator, dtype=x.dtype) * 5.0
    else:
        junk = torch.randint(1, max(vocab_size, 2), x.shape, generator=generator, dtype=x.dtype)
    where = pad.reshape(*pad.shape, *([1] * (x.dim() - 2)))
    return torch.where(where, junk, x)


def probe_model(model: SetModel, dataset: SetDataset, n_bags: int = 4) -> ProbeReport:
    """Check a model's output on real bags: logits (B, C) finite, attention (B, N) or None,
    attention 0 at padding, and logits unchanged by the padding. Shape and type problems raise
    SpecError (field ``model_builder``); padding problems are reported."""
    bags = _probe_bags(dataset, n_bags)
    widest = max(len(b) for b in bags)
    narrow = collate(bags, pad_to=widest + 2)
    wide = collate(bags, pad_to=widest + 7)
    n_classes = dataset.n_classes
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            module = model.module if isinstance(model, UserModel) else model
            raw = _checked_forward(module, narrow.x, narrow.mask)
            output = as_set_output(raw, "model_builder.forward")
            generator = torch.Generator().manual_seed(0)
            junk_x = _junk_padding(wide.x, wide.mask, dataset.vocab_size, generator)
            widened = as_set_output(_checked_forward(module, junk_x, wide.mask),
                                    "model_builder.forward")
    finally:
        model.train(was_training)
    batch = len(bags)
    _check_logits(output.logits, batch, n_classes)
    _check_logits(widened.logits, batch, n_classes)
    if (output.attention is None) != (widened.attention is None):
        raise SpecError("model_builder.forward", "attention on some batches only",
                        "attention (B, N) on every batch, or None on every batch")
    attention_max = 0.0
    if output.attention is not None:
        for out, padded in ((output, narrow), (widened, wide)):
            attention = out.attention
            assert attention is not None  # checked just above; narrows the type
            shape = tuple(padded.mask.shape)
            if tuple(attention.shape) != shape:
                raise SpecError("model_builder.forward", f"attention of shape "
                                f"{tuple(attention.shape)}", f"attention of shape (B, N) = "
                                f"{shape} (one weight per instance) or None")
            if not bool(torch.isfinite(attention[padded.mask]).all()):
                raise SpecError("model_builder.forward", "non-finite attention",
                                "finite attention at real instances")
            leaked = attention[~padded.mask].abs()
            attention_max = max(attention_max, float(leaked.max()) if leaked.numel() else 0.0)
    change = (torch.softmax(output.logits.double(), -1)
              - torch.softmax(widened.logits.double(), -1)).abs().max()
    return ProbeReport(_output_kind(raw), output.attention is not None, attention_max,
                       float(change) if torch.isfinite(change) else math.inf)


def _checked_forward(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> Any:
    try:
        return module(x, mask)
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of user code on a valid batch
        raise SpecError("model_builder.forward", f"{type(err).__name__}: {err}",
                        f"a forward(x, mask) that accepts x: {tuple(x.shape)} {x.dtype} and "
                        f"mask: {tuple(mask.shape)} bool") from err


def _check_logits(logits: torch.Tensor, batch: int, n_classes: int) -> None:
    if tuple(logits.shape) != (batch, n_classes):
        raise SpecError("model_builder.forward", f"logits of shape {tuple(logits.shape)}",
                        f"logits of shape (B, C) = ({batch}, {n_classes}) for {batch} bags and "
                        f"{n_classes} classes")
    if not logits.dtype.is_floating_point or not bool(torch.isfinite(logits).all()):
        raise SpecError("model_builder.forward", f"logits of dtype {logits.dtype} with "
                        f"{int((~torch.isfinite(logits.double())).sum())} non-finite values",
                        "finite floating-point logits")


# --------------------------------------------------------------------------- model references


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let `module:object` references name modules of the working directory (as `python -m`
    does), without leaving the directory on sys.path."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


#: Endings of checkpoint files (`attnsets.training.save_model` / `save_ensemble`).
CHECKPOINT_ENDINGS = (".pt", ".pth", ".ckpt")


def load_builder(reference: str) -> ModelBuilder | ModelSpec | str:
    """Resolve a model reference from the command line.

    "attention" (a registered pooling name) -> the name; "package.module:build" or
    "path/to/file.py:build" -> the object `build` (dotted attributes allowed, e.g.
    "mod:Factory.build"); "path/to/model.pt" (a checkpoint of `save_model` / `save_ensemble`)
    -> the ModelSpec saved in it (the architecture; its weights are not used). A missing or
    damaged file, a module that fails to import and a missing object raise SpecError
    ``model`` (DataFormatError for a damaged checkpoint) naming the file."""
    if not isinstance(reference, str) or not reference:
        raise SpecError("model", reference, "a pooling name or module:object")
    if reference.lower().endswith(CHECKPOINT_ENDINGS):
        return _checkpoint_spec(reference)
    if ":" not in reference:
        if reference in POOLINGS:
            return reference
        raise SpecError("model", reference, f"a registered pooling "
                                            f"({POOLINGS.unknown(reference).allowed}), "
                                            "module:object / path/to/file.py:object or a "
                                            f"checkpoint file ({', '.join(CHECKPOINT_ENDINGS)})")
    module_part, _, attribute = reference.rpartition(":")
    if not module_part or not attribute:
        raise SpecError("model", reference, "module:object with both parts")
    module = _import_reference(reference, module_part)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError("model", reference, f"an object of {module_part} (no {part!r} there; "
                                                f"it has {_public_names(target)})")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError("model", reference, "a callable (info, seed) -> nn.Module (this is "
                                            f"an object of type {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def _import_reference(reference: str, module_part: str) -> Any:
    """The module of a reference: a .py file executed under a private name, or an importable
    module; any failure while importing user code is a SpecError naming it."""
    path = Path(module_part).expanduser()
    if not (module_part.endswith(".py") or path.is_file()):
        try:
            with _cwd_on_path():
                return importlib.import_module(module_part)
        except ModuleNotFoundError as err:
            if err.name is not None and module_part.startswith(err.name):
                raise SpecError("model", reference, f"an importable module ({err})") from None
            raise SpecError("model", reference, f"a module whose imports are installed ({err})"
                            ) from None
        except Exception as err:  # noqa: BLE001 - any failure of the user's module on import
            raise SpecError("model", reference, f"a module that imports without error "
                                                f"({_where(err)})") from None
    if not path.is_file():
        raise SpecError("model", reference, f"an existing Python file ({path} not found)")
    name = f"attnsets_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError("model", reference, "a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - syntax errors, failing imports, top-level raises
        sys.modules.pop(name, None)
        raise SpecError("model", reference, f"a Python file that runs without error "
                                            f"({_where(err)})") from None
    return module


def _where(err: BaseException) -> str:
    """"SyntaxError: invalid syntax (file.py, line 3)" and the like, for an import failure."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({Path(err.filename or '?').name}, line {err.lineno})"
    return f"{type(err).__name__}: {err}"


def _checkpoint_spec(reference: str) -> ModelSpec:
    from attnsets.registry import build_dataclass
    from attnsets.training.checkpoint import read_checkpoint_meta

    path = Path(reference).expanduser()
    if not path.is_file():
        raise SpecError("model", reference, "an existing checkpoint file (not found)")
    meta = read_checkpoint_meta(path)  # DataFormatError naming the file when damaged
    raw = meta.get("model_spec")
    if not isinstance(raw, dict):
        raise DataFormatError(f"{path}: damaged checkpoint (model_spec missing)")
    return build_dataclass(ModelSpec, raw, "model")  # type: ignore[no-any-return]


def _public_names(obj: Any) -> list[str]:
    return sorted(n for n in vars(obj) if not n.startswith("_"))[:20] if hasattr(
        obj, "__dict__") else []
