"""An input-major copy of a tied unembedding, kept for decoding on CPU and checked at every call.

Why: a decode step reads the whole unembedding once per token. Tied embeddings (GPT-2, Gemma, small
Llamas and Qwens) share one ``[d_vocab, d_model]`` row-major matrix with the token embedding, the layout
lookups need; but BLAS streams a one-row product ``x @ W`` fastest from ``[d_model, d_vocab]`` storage.
On the GPT-2-small shape (2 CPU threads) the unembedding costs 6.1 ms of a decode step row-major and
5.1 ms input-major at batch 1, ~20 ms and ~10 ms at batch 8 (docs/benchmarks.md, "Generation"). Storing
the tied matrix input-major instead slows every forward's embedding lookup (~10%), so ``generate``
keeps a second, input-major copy (``d_vocab x d_model`` more memory: 154 MB for GPT-2-small fp32).

The copy is checked when each ``generate`` call starts (an edit made while a ``generate_stream`` is
being consumed shows from the next call on). It is rebuilt when the weight is a different tensor, storage,
dtype, device or ``_version`` (any in-place edit through the parameter), and when the fingerprint
``W @ r`` (one row-major matrix-vector product, ~6 ms for GPT-2-small; ``r`` fixed, ``|r_d|`` in
``[1, 2)`` with random signs) differs, in any bit, from the one taken when the copy was built: that
catches edits autograd does not count, such as ``model.W_E.data[...] = ...``. What it cannot see is an
edit too small to move any row's ``W @ r`` by one float rounding (an element nudged by a few ulps of
its row's dot product); such an edit moves each logit by about the rounding of the product itself.

Only on CPU (GPU BLAS reads either layout at full speed), only when the unembedding is not input-major
already (untied ones are, :mod:`lens.components.linear`), and only for calls with at least
:data:`MIN_DECODE_ROWS` decoded rows (batch x new tokens), which save more than the check costs; building the copy
(0.1-0.3 s for GPT-2-small) is paid once per model.
Set ``model.decode_unembed_copy = False`` to never keep one; ``model.unembed`` stays untouched either way.

>>> w_t = decode_unembed.weight_for_decode(model, rows=8 * 128)   # [d_model, d_vocab] for x @ w_t
>>> decode_unembed.release(model)                                  # frees the copy
"""

from __future__ import annotations

import weakref

import torch
from jaxtyping import Float
from torch import Tensor

MIN_DECODE_ROWS = 64
"""Fewest decoded rows (batch x max_new_tokens) for which ``generate`` reads (and if needed builds) the copy."""

_BLOCK = 1024  # rows per transposed block: torch's one-shot transpose copy is ~2.5x slower
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Copy (dies with the model)


class _Copy:
    """The input-major copy, what it was built from, and the fingerprint that must still hold."""

    def __init__(self, weight: Tensor) -> None:
        self.key = _key(weight)
        gen = torch.Generator().manual_seed(0x1E45)  # entries of both signs, |r_d| in [1, 2): no blind coordinate
        d = weight.shape[1]
        sign = torch.randint(0, 2, (d,), generator=gen).mul_(2).sub_(1)
        self.probe = (torch.rand(d, generator=gen, dtype=torch.float64) + 1.0).mul_(sign).to(weight.dtype)
        self.fingerprint = torch.mv(weight, self.probe)
        self.t = torch.empty(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
        for i in range(0, weight.shape[0], _BLOCK):
            self.t[:, i : i + _BLOCK].copy_(weight[i : i + _BLOCK].t())

    def matches(self, weight: Tensor) -> bool:
        return self.key == _key(weight) and torch.equal(torch.mv(weight, self.probe), self.fingerprint)


def _key(w: Tensor) -> tuple:
    return (id(w), w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w.device, w._version)


def wants_copy(model, rows: int) -> bool:
    """True when decoding ``rows`` (batch x new tokens) should read an input-major copy of the unembedding."""
    w = model.unembed.weight
    return (
        model.decode_unembed_copy and w.device.type == "cpu" and not w.t().is_contiguous() and rows >= MIN_DECODE_ROWS
    )


def weight_for_decode(model, rows: int) -> Float[Tensor, "d_model d_vocab"]:
    """``model.unembed.weight.t()`` in the layout to decode ``rows`` rows with: the checked copy, or a view.

    Values are the weight's (a copy is rebuilt whenever the checks above see a change); only the layout, and
    with it the summation order of the product (~1e-6 relative), can differ from ``model.unembed``.
    """
    w = model.unembed.weight
    if not wants_copy(model, rows):
        return w.t()
    with torch.no_grad():
        copy = _COPIES.get(model)
        if copy is None or not copy.matches(w):
            _COPIES.pop(model, None)  # drop the stale copy before allocating the next
            copy = _COPIES[model] = _Copy(w)
    return copy.t


def release(model) -> None:
    """Free the decode copy (the next long ``generate`` call builds it again)."""
    _COPIES.pop(model, None)


def holds_copy(model) -> bool:
    """True while a decode copy is kept for ``model``."""
    return model in _COPIES
