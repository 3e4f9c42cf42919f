"""Training step cost of the self-attention poolings: the full forward (every diagnostic map)
against the logits-only path that fit, fit_ensemble and predict now use.

`python benchmarks/bench_training_path.py` (1 thread): one optimiser step (forward, loss,
backward) on 16 bags of exactly N instances, 5 members, for N = 20, 200, 1000. "one after
another" = a loop over the members (fit); "vectorised" = one vmap over stacked members
(fit_ensemble's vectorised strategy). The full forward is what the trainers called before.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsets.models.base import InputInfo, ModelSpec, build_model  # noqa: E402
from benchmarks.common import machine, table, write_section  # noqa: E402

INFO = InputInfo("vector", (16,), 2)
MEMBERS, BAGS, DIM = 5, 16, 32
SIZES = (20, 200, 1000)
POOLINGS = ("transformer_cls", "set_transformer", "attention")


def best_ms(step: Callable[[], None], budget_s: float = 3.0, most: int = 10) -> float:
    step()  # warm-up
    times: list[float] = []
    while len(times) < most and sum(times) < budget_s:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def cases(pooling: str, n: int) -> dict[tuple[str, bool], float]:
    models = [build_model(ModelSpec(pooling=pooling, embed_dim=DIM), INFO, seed=s)
              for s in range(MEMBERS)]
    template = copy.deepcopy(models[0])
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(MEMBERS, BAGS, n, INFO.instance_shape[0], generator=generator)
    mask = torch.ones(MEMBERS, BAGS, n, dtype=torch.bool)
    mask[:, ::2, n - n // 4:] = False  # half of the bags padded by a quarter
    labels = torch.randint(0, 2, (MEMBERS, BAGS), generator=generator)
    out: dict[tuple[str, bool], float] = {}
    for full in (True, False):
        def loop(full: bool = full) -> None:
            for k, model in enumerate(models):
                logits = model(x[k], mask[k], need_maps=full).logits
                torch.nn.functional.cross_entropy(logits, labels[k]).backward()

        for module in template.modules():  # as fit_ensemble sets its template
            if hasattr(module, "fused"):
                module.fused = False

        def stacked(full: bool = full) -> None:
            logits = vmap(lambda p, b, x_, m: functional_call(template, (p, b), (x_, m),
                                                              {"need_maps": full}).logits)(
                params, buffers, x, mask)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()

        out[("one after another", full)] = best_ms(loop)
        out[("vectorised", full)] = best_ms(stacked)
    return out


def run() -> str:
    torch.set_num_threads(1)
    rows = []
    for pooling in POOLINGS:
        for n in SIZES:
            measured = cases(pooling, n)
            for trainer in ("one after another", "vectorised"):
                before, after = measured[(trainer, True)], measured[(trainer, False)]
                rows.append([pooling, str(n), trainer, f"{before:,.1f}", f"{after:,.1f}",
                             f"{before / after:.1f}x"])
            print(rows[-2], rows[-1], flush=True)
    return "\n".join([
        "## Training step: full forward vs logits only",
        "",
        f"Machine: {machine()}. One optimiser step (forward, cross-entropy, backward) of "
        f"{MEMBERS} members on {BAGS} bags of N instances (half of them padded by a quarter), "
        f"mlp encoder, embed_dim {DIM}, default pooling parameters. 'full forward' is what fit and "
        "fit_ensemble called before: every diagnostic map (transformer_cls: every layer's "
        "(H, N+1, N+1) map and value norms; set_transformer: the N x N instance compositions). "
        "'logits only' is `SetModel.forward(..., need_maps=False)`, which the trainers and "
        "`predict` now call: fused attention one member at a time, the matmul form without "
        "maps under vmap (the fused kernel has no vmap batching rule), transformer_cls's last "
        "layer for the class token only. Best of up to 10 steps; both paths side by side in "
        "one process. Gradients agree within 1e-5 (tests/test_perturbation_fast.py).",
        "",
        table(["pooling", "N", "members", "full forward ms/step", "logits only ms/step",
               "speed-up"], rows),
    ])


if __name__ == "__main__":
    section = run()
    write_section("training_path", section)
    print(section)
