"""Process settings the compiler, finetune and loop share."""
from __future__ import annotations

import contextlib


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
