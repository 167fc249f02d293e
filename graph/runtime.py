"""Process settings the compiler, finetune and loop share."""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` for the block (compile pins BLAS for its bits; tune
    and extract pin it because a second thread on a shared 2-core machine made LoRA steps
    20× slower: torch's flush-denormal flag does not reach its worker threads)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cores() -> int:
    """The CPU cores this process may run on (what taskset or a container allows)."""
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def block_pool(workers: int = 0) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """map(fn, items) over independent blocks on `workers` threads (0: cores()), results in
    input order as they are ready. With more than one worker each block runs torch on one
    intra-op thread with flush-denormal set in its own thread (the flag is per thread: see
    torch_threads) and BLAS on one thread, so two blocks share two cores without
    oversubscribing them and each does the same arithmetic whichever thread runs it. numpy,
    BLAS, scipy's sparse kernels and torch's ops release the GIL; what a block does in
    Python does not run in parallel. `fn` must not share mutable state across blocks
    (loop.rank.Features serialises its model)."""
    workers = workers or cores()
    if workers <= 1:
        yield map
        return
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from threadpoolctl import threadpool_limits

    def run(fn: Callable, item):
        torch.set_flush_denormal(True)
        with torch.no_grad():                  # grad mode is per thread too; blocks score
            return fn(item)

    with threadpool_limits(1, "blas"), torch_threads(1), \
            ThreadPoolExecutor(workers, thread_name_prefix="graft-block") as pool:
        yield lambda fn, items: pool.map(functools.partial(run, fn), items)


DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = ("where the models run: auto (CUDA when torch sees a GPU, else the CPU), cpu, "
               "or cuda[:N]")


def resolve_device(name: str) -> str:
    """The torch device `--device name` means: auto is CUDA when torch sees a GPU, else the
    CPU; cuda (or cuda:N) without one is an error rather than a silent CPU run."""
    import torch

    from graph.errors import GraftError
    base = (name or "auto").split(":")[0]
    if base not in DEVICES:
        raise GraftError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if base == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise GraftError(f"--device {name}: torch sees no CUDA device "
                         f"(torch {torch.__version__}, cuda available: False); use --device "
                         "cpu or auto")
    return name


def device_of(model):
    """The device a model's weights are on (inputs go there)."""
    return next(model.parameters()).device
