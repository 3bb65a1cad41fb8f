"""Few distinct matrix-product shapes for bf16 inference on the CPU.

PyTorch runs bf16 matrix products on the CPU through oneDNN, which JIT-compiles a kernel for every new shape
and keeps it for the life of the process. The matcher's token counts change with every frame and, with point
pruning, with every layer, so under bf16 autocast each new count costs a compile (a latency spike) and
about 0.3-0.5 MB that is never given back: a matcher process grew by 0.74-0.95 GB over its first 100 pairs (KITTI
frames, random keypoint sets), and by 0.3 MB per further new shape even with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``
(docs/results.md, "bf16 on a video sequence"). Padding the
varying sizes of each product with zeros up to a few bucket sizes bounds the set of shapes, and so the memory,
at the price of a little extra arithmetic; the values of the real rows and columns are those of the unpadded
product (zeros add nothing to a dot product).

``BucketedGemmShapes`` is a ``TorchFunctionMode``: while it is active (one thread: torch's mode stack is per
thread), ``F.linear`` gets its rows (the flattened leading dimensions of the input) padded, and ``torch.matmul``
/ ``@`` of two matrices (or batches of them with equal batch sizes) all three sizes. Everything else passes
through untouched.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def bucket_size(n: int) -> int:
    """The size n is padded to: n itself up to 32, then the next multiple of 32 up to 256, of 64 up to 1024,
    of 128 beyond: fewer than 32 extra rows up to 256, at most 25 % more from 257 to 512 and 12.5 % above, and
    27 sizes from 33 to 2048."""
    if n <= 32:
        return n
    step = 32 if n <= 256 else 64 if n <= 1024 else 128
    return -(-n // step) * step


def _pad_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    extra = size - t.shape[dim]
    if extra == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, extra]
    return F.pad(t, pad)


class BucketedGemmShapes(TorchFunctionMode):
    """Pads the varying sizes of matrix products to ``bucket_size`` (see the module's docstring). The result has
    the unpadded shape (a view of the padded product)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__) and not kwargs:
            return self._matmul(*args)
        return func(*args, **kwargs)

    @staticmethod
    def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n = input.numel() // max(1, input.shape[-1]) if input.dim() >= 2 else 0
        size = bucket_size(n)
        if size == n:  # already a bucket size (e.g. a full keypoint budget), or a vector
            return F.linear(input, weight, bias)
        out = F.linear(_pad_dim(input.reshape(n, input.shape[-1]), 0, size), weight, bias)
        return out[:n].view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2 \
                or a.shape[:-2] != b.shape[:-2]:
            return torch.matmul(a, b)
        n, k, m = a.shape[-2], a.shape[-1], b.shape[-1]
        a = _pad_dim(_pad_dim(a, -2, bucket_size(n)), -1, bucket_size(k))
        b = _pad_dim(_pad_dim(b, -2, bucket_size(k)), -1, bucket_size(m))
        return torch.matmul(a, b)[..., :n, :m]


@contextmanager
def bf16_autocast(device_type: str, enabled: bool, bucket: bool = True) -> Iterator[None]:
    """bf16 autocast where ``enabled``; on the CPU with its matrix products padded to a few shapes
    (``BucketedGemmShapes``; ``bucket=False`` only to measure without). The arithmetic of ``Matcher`` and of
    ``mambaglue bench``'s bf16 rows."""
    with ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled))
        if enabled and bucket and device_type == "cpu":
            stack.enter_context(BucketedGemmShapes())
        yield
