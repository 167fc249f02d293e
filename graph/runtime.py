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
