"""Run cells in-process, in local worker processes, or on a Ray cluster. Workers only compute;
each finished CellRecord goes back to the driver, which alone writes the store."""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from attnsets.errors import SpecError
from attnsets.study.cell import Cell
from attnsets.study.record import CellRecord, Status

EXECUTORS = ("local", "ray")
CellFn = Callable[[Cell], CellRecord]


def failed_record(cell: Cell, error: BaseException, started: float) -> CellRecord:
    """A record saying the cell failed, with the error and its traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return CellRecord(cell=cell, status=Status.FAILED,
                      error=f"{type(error).__name__}: {error}\n{text}", started=started,
                      finished=time.time())


def guarded(run_cell: CellFn, cell: Cell, threads: int) -> CellRecord:
    """Run one cell; any exception (bad data, NaN loss, a user plugin) becomes a failed record."""
    import torch

    from attnsets.registry import load_plugins

    torch.set_num_threads(threads)
    started = time.time()
    try:
        load_plugins()  # a spawned worker has not imported the driver's plugins yet
    except Exception as error:  # noqa: BLE001 - reported as this cell's failure
        return failed_record(cell, error, started)
    try:
        return run_cell(cell)
    except Exception as error:  # noqa: BLE001 - a failing cell must not stop the study
        return failed_record(cell, error, started)


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker: the cores shared out, cores // workers, and at least 1. So as
    many workers as cores (or more) gives every worker one thread: on 2 cores two 1-thread
    workers gave ~1.5x the throughput of one 2-thread worker (issue 12; small tensors scale
    badly across threads), and more threads than cores in total would contend. One worker gets
    every core. cores: default os.cpu_count()."""
    if not isinstance(workers, int) or workers < 1:
        raise SpecError("workers", workers, "an integer >= 1")
    available = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, available // workers)


def gpu_plan(device: str, workers: int, visible_gpus: int) -> tuple[int, list[int] | None]:
    """(workers, the GPU of each worker or None). A study on "auto" or "cuda" with G visible GPUs
    runs at most G local workers, worker i pinned to GPU i (CUDA_VISIBLE_DEVICES), so cells
    never share a GPU; "cuda:N" and the CPU leave the workers as asked, unpinned."""
    if device in ("auto", "cuda") and visible_gpus > 0:
        count = min(workers, visible_gpus)
        return count, list(range(count))
    return workers, None


def _worker_start(gpus: Any) -> None:
    """Worker initializer: die with the driver; take a GPU of its own when the study has them."""
    if gpus is not None:
        # Before this worker's first CUDA call: torch is imported only when a cell runs.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    die_with_parent()


def die_with_parent() -> None:
    """Worker initializer (Linux): the kernel sends this worker SIGTERM when the driver dies,
    even by kill -9, so no orphan keeps computing a cell nobody will store."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not glibc / no prctl: orphans finish their cell and exit
        return
    if os.getppid() == 1:  # the driver died before prctl took effect
        os._exit(1)


def run_cells(cells: Sequence[Cell], run_cell: CellFn, *, workers: int = 1,
              executor: str = "local", address: str | None = None,
              device: str = "cpu") -> Iterator[CellRecord]:
    """Yield one record per cell, in completion order; cells start in the order given (the
    runner passes them most expensive first). Each worker runs worker_threads(workers) torch
    threads. device: the study's device string (for the GPU plan of local workers and Ray's
    GPU requests)."""
    if executor not in EXECUTORS:
        raise SpecError("executor", executor, f"one of {list(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise SpecError("workers", workers, "an integer >= 1")
    cuda = _uses_cuda(device)
    if executor == "ray":
        threads = worker_threads(workers)
        yield from _run_ray(cells, run_cell, workers, threads, address, cuda)
        return
    workers, gpus = gpu_plan(device, workers, _visible_gpus() if cuda else 0)
    threads = worker_threads(workers)
    if workers == 1:
        import torch

        caller_threads = torch.get_num_threads()
        try:
            for cell in cells:
                yield guarded(run_cell, cell, threads)
        finally:  # in-process cells must not leave the caller's thread setting changed
            torch.set_num_threads(caller_threads)
    else:
        yield from _run_pool(cells, run_cell, workers, threads, gpus)


def _uses_cuda(device: str) -> bool:
    from attnsets.device import resolve_device

    return resolve_device(device, "study.device").type == "cuda"


def _visible_gpus() -> int:
    import torch

    return int(torch.cuda.device_count())


def _run_pool(cells: Sequence[Cell], run_cell: CellFn, workers: int, threads: int,
              gpus: list[int] | None = None) -> Iterator[CellRecord]:
    """Local worker processes with at most `workers` cells in flight. A worker killed by the OS
    (e.g. out of memory) breaks the pool; only the cells in flight then are suspects: the others
    go on in a fresh pool, and each suspect is rerun alone at the end (with the machine to
    itself), so an innocent neighbour completes and the culprit is recorded as failed."""
    queue = deque(cells)
    suspects: deque[Cell] = deque()
    while queue:
        yield from _pool_pass(queue, suspects, run_cell, workers, threads, gpus)
    for cell in suspects:
        alone: deque[Cell] = deque([cell])
        again: deque[Cell] = deque()
        yield from _pool_pass(alone, again, run_cell, 1, threads, gpus[:1] if gpus else None)
        for culprit in again:
            reason = RuntimeError("the worker process running this cell died, also when it ran "
                                  "alone (killed by the OS, e.g. out of memory?)")
            yield failed_record(culprit, reason, time.time())


def _pool_pass(queue: deque[Cell], suspects: deque[Cell], run_cell: CellFn, workers: int,
               threads: int, gpus: list[int] | None = None) -> Iterator[CellRecord]:
    """Run cells from `queue` until it is empty or the pool breaks; cells in flight when it
    breaks are appended to `suspects`. gpus: one GPU index per worker, or None."""
    context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    gpu_queue = None
    if gpus:
        gpu_queue = context.Queue()
        for index in gpus:
            gpu_queue.put(index)
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                     initargs=(gpu_queue,)) as pool:
        running: dict[futures.Future[CellRecord], Cell] = {}
        while queue or running:
            while queue and len(running) < workers:
                cell = queue.popleft()
                running[pool.submit(guarded, run_cell, cell, threads)] = cell
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            broken = False
            for future in finished:
                cell = running.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    broken = True
                    suspects.append(cell)
                except Exception as error:  # noqa: BLE001 - e.g. an unpicklable record
                    yield failed_record(cell, error, time.time())
            if broken:  # every cell still in flight died with the pool
                suspects.extend(running.values())
                return


def _run_ray(cells: Sequence[Cell], run_cell: CellFn, workers: int, threads: int,
             address: str | None, cuda: bool = False) -> Iterator[CellRecord]:
    try:
        import ray
    except ModuleNotFoundError:
        raise SpecError("executor", "ray",
                        "'local', or install the extra: pip install 'attnsets[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    from attnsets.registry import PLUGINS_ENV

    plugins = os.environ.get(PLUGINS_ENV, "")
    options: dict[str, Any] = {"num_cpus": 1}
    if cuda:  # each cell takes a whole GPU; Ray sets CUDA_VISIBLE_DEVICES for the task
        options["num_gpus"] = 1
    if plugins:  # Ray workers do not inherit the driver's environment
        options["runtime_env"] = {"env_vars": {PLUGINS_ENV: plugins}}
    remote = ray.remote(**options)(guarded)
    try:
        pending = {remote.remote(run_cell, cell, threads): cell for cell in cells}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a lost worker or node
                    yield failed_record(cell, error, time.time())
    finally:
        if started_here:
            ray.shutdown()
