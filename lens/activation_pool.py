"""Recycled CPU memory for cached activations, so repeated ``run_with_cache`` calls stay fast.

Why: a cache keeps every activation of a forward alive, so each call needs fresh memory the size of
the whole cache (about 0.9 GB for GPT-2-small at batch 8 x 128). On CPU, glibc returns such large
freed blocks to the OS and the next call page-faults and zero-fills them again; on a VM that costs
20-100% of the forward (docs/benchmarks.md). The pool instead copies each cached activation into a
buffer that an earlier call used and whose cache is gone, so the forward keeps reusing its own hot
working memory and the cache lands in memory that is already mapped.

Safety: a buffer is reused only when nothing but the pool references its storage: no tensor, view,
NumPy array or autograd graph (checked by the storage's use count, so a view you kept of an old
cache is never overwritten). Memory is bounded: the pool forgets buffers not used by the last three
calls (the one running, the previous cache a loop like ``_, cache = model.run_with_cache(x)`` still
holds while the next call runs, and the one before, whose memory that call reuses), so at most about
two caches' worth of idle memory is held, and ``clear()`` (``model.clear_activation_pool()``)
returns it at once. CUDA and other devices already cache memory in torch's allocator, so only CPU
tensors are pooled; without the private use-count API the pool turns itself off (plain behaviour).

>>> pool = ActivationPool()
>>> pool.new_call(); a = pool.take(torch.ones(3)); del a
>>> pool.new_call(); b = pool.take(torch.zeros(3))   # reuses a's memory: a is gone
"""

from __future__ import annotations

import torch
from torch import Tensor

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_uses(t: Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata)


class _Buffer:
    __slots__ = ("tensor", "idle_uses", "call")

    def __init__(self, tensor: Tensor, call: int):
        self.tensor, self.call = tensor, call
        self.idle_uses = _storage_uses(tensor)  # the count when only the pool holds it

    def idle(self) -> bool:
        return _storage_uses(self.tensor) == self.idle_uses


class ActivationPool:
    """Buffers keyed by (shape, dtype), recycled once the caches they were handed to are gone."""

    keep_calls: int = 2  # buffers unused by this call and the last `keep_calls` calls are forgotten

    def __init__(self) -> None:
        self._free: dict[tuple, list[_Buffer]] = {}
        self._call = 0
        self.enabled = _use_count is not None

    def __getstate__(self) -> dict:  # copies and pickles of a model start with an empty pool
        return {"_free": {}, "_call": 0, "enabled": self.enabled}

    def new_call(self) -> None:
        """Start a cache: forget buffers the last ``keep_calls`` calls did not use."""
        self._call += 1
        oldest = self._call - self.keep_calls
        for key in list(self._free):
            kept = [b for b in self._free[key] if b.call >= oldest]
            if kept:
                self._free[key] = kept
            else:
                del self._free[key]

    def take(self, t: Tensor) -> Tensor:
        """A copy of ``t`` in recycled memory (or ``t`` itself where pooling does not apply)."""
        if not self.enabled or t.device.type != "cpu" or t.is_sparse or t.numel() == 0:
            return t
        key = (tuple(t.shape), t.dtype)
        buffers = self._free.setdefault(key, [])
        buf = next((b for b in buffers if b.call != self._call and b.idle()), None)
        if buf is None:
            buf = _Buffer(torch.empty(t.shape, dtype=t.dtype), self._call)
            buffers.append(buf)
        buf.call = self._call
        return buf.tensor.view(buf.tensor.shape).copy_(t)  # a view: the cache's reference is counted

    def clear(self) -> None:
        """Forget every buffer (memory returns to the allocator once no cache uses it)."""
        self._free.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of buffers the pool holds (in use by a live cache or idle)."""
        return sum(b.tensor.nbytes for bufs in self._free.values() for b in bufs)
