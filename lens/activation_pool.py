"""Recycled CPU memory for cached activations, so repeated ``run_with_cache`` calls stay fast.

What it means for users: with ``run_with_cache(reuse_memory=True)`` (the default) every cached value is
a *copy* of the activation taken when its hook fired, on every device, and the copies of CPU activations
land in memory recycled from earlier caches that are gone. Values and aliasing are therefore the same on
CPU and GPU: a cache never shares storage with the forward's tensors, and nothing a later hook does in
place shows in it.

Why: a cache keeps every activation of a forward alive, so each call needs fresh memory the size of the
whole cache. On CPU, glibc returns such large freed blocks to the OS and the next call page-faults and
zero-fills them again; recycling the buffers of dropped caches avoids that (measured in
docs/benchmarks.md, "Forward pass"). GPU allocators already cache memory, so other devices get plain
copies.

Safety: a buffer is reused only when nothing but the pool references its storage (no tensor, view, NumPy
array or autograd graph), checked with torch's storage use count. Where that (private) torch API is
missing, the pool still copies but never recycles: same values, only slower. Memory is bounded: buffers
not used by the last three calls are forgotten, and ``clear()`` (``model.clear_activation_pool()``)
returns them at once. Calls from several threads are serialised by a lock.

>>> pool = ActivationPool()
>>> pool.new_call(); a = pool.take(torch.ones(3)); del a
>>> pool.new_call(); b = pool.take(torch.zeros(3))   # reuses a's memory: a is gone
"""

from __future__ import annotations

import threading

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
    """Copies of activations; CPU ones in buffers keyed by (shape, dtype), recycled once their caches are gone."""

    keep_calls: int = 2  # buffers unused by this call and the last `keep_calls` calls are forgotten

    def __init__(self) -> None:
        self._free: dict[tuple, list[_Buffer]] = {}
        self._call = 0
        self._lock = threading.Lock()

    @property
    def recycles(self) -> bool:
        """True when CPU copies reuse memory (torch exposes the storage use count it needs)."""
        return _use_count is not None

    def __getstate__(self) -> dict:  # copies and pickles of a model start with an empty pool
        return {"_free": {}, "_call": 0}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def new_call(self) -> None:
        """Start a cache: forget buffers the last ``keep_calls`` calls did not use."""
        with self._lock:
            self._call += 1
            oldest = self._call - self.keep_calls
            for key in list(self._free):
                kept = [b for b in self._free[key] if b.call >= oldest]
                if kept:
                    self._free[key] = kept
                else:
                    del self._free[key]

    def take(self, t: Tensor) -> Tensor:
        """A copy of ``t``: in recycled memory for CPU tensors, a plain copy elsewhere."""
        if not self.recycles or t.device.type != "cpu" or t.layout != torch.strided or t.numel() == 0:
            return t.clone()
        key = (tuple(t.shape), t.dtype)
        with self._lock:
            buffers = self._free.setdefault(key, [])
            buf = next((b for b in buffers if b.call != self._call and b.idle()), None)
            if buf is None:
                buf = _Buffer(torch.empty(t.shape, dtype=t.dtype), self._call)
                buffers.append(buf)
            buf.call = self._call
            out = buf.tensor.view(buf.tensor.shape)  # a view: the cache's reference is counted
        return out.copy_(t)

    def clear(self) -> None:
        """Forget every buffer (memory returns to the allocator once no cache uses it)."""
        with self._lock:
            self._free.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of buffers the pool holds (in use by a live cache or idle)."""
        with self._lock:
            return sum(b.tensor.nbytes for bufs in self._free.values() for b in bufs)
