"""Where training, models and explainers run: device strings, seeded RNG forks, determinism.

A device string is ``"auto"`` (the current CUDA device when one is visible, else the CPU),
``"cpu"``, ``"cuda"`` (the current CUDA device) or ``"cuda:N"``. Config validation checks the
syntax only (`check_device_string`), so a study written on a laptop still validates; running it
resolves the string (`resolve_device`) and refuses CUDA on a machine without one before any
work starts.

Reproducibility. On the CPU a seed gives bitwise identical results (for a fixed number of torch
threads). On CUDA, `seeded` seeds the CPU generator and the generator of the training device, so
dropout masks are reproducible; `deterministic` turns on PyTorch's deterministic algorithms
(``torch.use_deterministic_algorithms(True, warn_only=True)``, deterministic cuDNN, no TF32,
``CUBLAS_WORKSPACE_CONFIG``). Where PyTorch has no deterministic CUDA kernel (atomics in
``index_add`` / ``scatter_add`` backward passes, some reductions) it warns instead of failing,
and float sums are done in another order than on the CPU anyway. So a model trained on CUDA
matches the same seed trained on the CPU only within a tolerance: `CPU_CUDA_PROB_ATOL` on
predicted class probabilities and `CPU_CUDA_SCORE_ATOL` on attention weights, for the short
trainings of benchmarks/bench_gpu.py. Longer trainings amplify rounding differences, and a
different early-stopping epoch (a validation-loss tie broken the other way) can exceed them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch

from attnsets.errors import SpecError

#: Accepted device strings, as SpecError messages state them.
DEVICE_FORMS = '"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N" (N >= 0)'
_DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda(:(0|[1-9][0-9]*))?)")

#: Max absolute difference of predicted class probabilities between a member trained on CUDA
#: and the same seed trained on the CPU (short trainings; see the module docstring).
CPU_CUDA_PROB_ATOL = 1e-3
#: The same for attention weights (each bag's weights sum to 1).
CPU_CUDA_SCORE_ATOL = 1e-3

#: cuBLAS needs a fixed workspace layout to give deterministic results (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


def check_device_string(value: object, field: str = "device") -> str:
    """`value` if it is a device string of an accepted form (availability is not checked);
    else SpecError naming `field`."""
    if not isinstance(value, str) or _DEVICE_PATTERN.fullmatch(value) is None:
        raise SpecError(field, value, DEVICE_FORMS)
    return value


def resolve_device(value: str, field: str = "device") -> torch.device:
    """The torch.device a device string means on this machine.

    "auto" -> the current CUDA device if CUDA is available, else cpu; "cuda" -> the current CUDA
    device (with its index, so it compares equal to a tensor's ``.device``); "cuda:N" -> that
    device. Raises SpecError naming `field` for a malformed string, for CUDA when no CUDA device
    is visible, and for an index >= the number of visible devices.
    """
    check_device_string(value, field)
    if value == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if value == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if available \
            else torch.device("cpu")
    if not available:
        raise SpecError(field, value, f"{DEVICE_FORMS}; no CUDA device is visible on this machine "
                        '(a CPU-only torch build, no GPU, or CUDA_VISIBLE_DEVICES is empty), '
                        'so use "cpu" or "auto"')
    if value == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    index = int(value.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise SpecError(field, value, f"{DEVICE_FORMS}; this machine has {count} visible CUDA "
                        f"device(s): cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); cpu for a module with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. A host-to-CUDA copy goes through pinned memory with
    non_blocking=True, so the host does not wait for the copy (nor for queued GPU work)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the CPU generator (and, for a CUDA `device`, that device's generator)
    seeded with `seed`; the caller's generator states are restored afterwards.

    Unlike ``torch.manual_seed`` this leaves the generators of other CUDA devices alone, since
    only the forked ones are restored."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else \
        (torch.cuda.current_device() if cuda else 0)
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA: deterministic algorithms where PyTorch has them (warn, not fail, where it has
    none), deterministic cuDNN without autotuning, and full fp32 matmuls / convolutions (no
    TF32); the caller's settings are restored afterwards. On other devices: nothing changes
    (CPU kernels are already deterministic for a fixed number of threads)."""
    if device.type != "cuda":
        yield
        return
    # Read by cuBLAS when it creates its handle, so it must be set before the first matmul of
    # the process; setdefault keeps a value the user chose.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        enabled, warn_only, cudnn_deterministic, benchmark, cudnn_tf32, matmul_tf32 = previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
