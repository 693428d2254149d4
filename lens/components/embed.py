"""Token embedding, learned position embedding and unembedding.

``W_E`` is ``[d_vocab, d_model]``, ``W_pos`` ``[n_positions, d_model]`` (the trained table: learned
positions are weights, not a mask, so their size follows the checkpoint), ``W_U`` ``[d_model, d_vocab]``.
The unembedding stores its weight as ``[d_vocab, d_model]`` so tied embeddings share one tensor. An untied
unembedding is stored input-major like every projection (:mod:`lens.components.linear`); a tied one keeps
the embedding's row-major layout, which lookups need.

The unembedding is the largest matrix a decode step reads, so :class:`Unembed` picks its kernel by layout and
row count (one home, no second implementation): a row-major weight with a few rows (2-64, e.g. a batch of
decode steps) is computed as ``(W @ x.T).T``, which CPU BLAS streams much faster than ``x @ W.T``; and inside
:meth:`Unembed.decode_layout` (entered by ``HookedTransformer.decoding`` for one ``generate`` call) a one-row
product on CPU reads an input-major copy of a row-major weight, built on entry and dropped on exit. Values
are the same; only the summation order can differ (float rounding). Measurements: docs/benchmarks.md.

>>> emb = Embed(cfg); emb(torch.tensor([[1, 2]])).shape
torch.Size([1, 2, 64])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens.components.linear import input_major, linear
from lens.config import TransformerConfig


class Embed(nn.Module):
    """Token embedding; multiplies by ``cfg.embedding_multiplier`` when set (Gemma's sqrt(d_model))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype, device=cfg.device))

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.weight

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        x = F.embedding(tokens, self.weight)
        if self.cfg.embedding_multiplier is not None:
            x = x * torch.tensor(self.cfg.embedding_multiplier, dtype=x.dtype)
        return x


class PosEmbed(nn.Module):
    """Learned absolute position embedding, indexed by per-token positions (padding-aware)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        n_pos = cfg.n_ctx_trained or cfg.n_ctx
        self.weight = nn.Parameter(torch.empty(n_pos, cfg.d_model, dtype=cfg.dtype, device=cfg.device))

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.weight

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.weight)


class Unembed(nn.Module):
    """Maps the final residual stream to logits: ``x @ W_U + b_U`` (kernel chosen by layout, see module docs)."""

    few_rows: int = 64  # up to this many rows, a row-major weight is multiplied as (W @ x.T).T

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        n_out = cfg.d_vocab_out  # the number of logits (d_vocab unless the config says otherwise)
        self.weight = input_major(n_out, cfg.d_model, dtype=cfg.dtype, device=cfg.device)
        self.bias = nn.Parameter(torch.zeros(n_out, dtype=cfg.dtype, device=cfg.device)) if cfg.unembed_bias else None
        self._decode: dict[int, _DecodeCopy] = {}  # thread ident -> the copy of that thread's decoding block

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.weight.T

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        if self.bias is None:
            return torch.zeros(self.cfg.d_vocab_out, dtype=self.weight.dtype, device=self.weight.device)
        return self.bias

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        logits = self._logits(x)
        cap = self.cfg.output_logits_soft_cap
        return logits if cap is None else torch.tanh(logits / cap) * cap  # Gemma 2's final soft cap

    def _logits(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        w = self.weight
        rows = x.numel() // x.shape[-1]
        decode = self._decode.get(threading.get_ident()) if self._decode and rows == 1 else None
        if decode is not None:  # this thread is inside decode_layout
            wt = decode.current(w)
            if wt is not None:  # the input-major copy of this call, valid for the weight as it is now
                return linear(x, wt.t(), self.bias)
        if 1 < rows <= self.few_rows and w.is_contiguous() and w.device.type == "cpu":
            x2 = x.reshape(rows, x.shape[-1])
            out = torch.mm(w, x2.t()) if self.bias is None else torch.addmm(self.bias[:, None], w, x2.t())
            return out.t().contiguous().view(*x.shape[:-1], w.shape[0])
        return linear(x, w, self.bias)

    @contextmanager
    def decode_layout(self, batch: int, steps: int) -> Iterator[None]:
        """Within this block, one-row products read an input-major copy of a row-major weight (CPU only).

        Worth it from ``steps`` of about 32 one-row decode steps at ``batch == 1`` (the copy costs about one
        pass over the weight); otherwise nothing happens. The copy is built on entry and dropped on exit, and
        rebuilt inside if the parameter is replaced or edited in place (its version counter moves); an edit
        through ``.data`` inside the block is the one change it cannot see. Only the thread that entered the
        block reads its copy (each thread has its own; forwards of other threads compute as outside it).
        """
        w = self.weight
        wanted = batch == 1 and steps >= 32 and w.device.type == "cpu" and w.is_contiguous()
        me = threading.get_ident()
        if not wanted or me in self._decode:
            yield
            return
        self._decode[me] = _DecodeCopy()
        try:
            yield
        finally:
            del self._decode[me]


class _DecodeCopy:
    """An input-major copy ``[d_model, d_vocab]`` of one weight, tied to its identity and version counter."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.t: Tensor | None = None

    def current(self, w: Tensor) -> Tensor | None:
        key = (id(w), w.data_ptr(), w._version, w.dtype, tuple(w.shape))
        if key != self.key:
            with torch.no_grad():
                t = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
                for i in range(0, w.shape[0], 256):  # blocked transpose: torch's one-shot copy is slower
                    t[:, i : i + 256].copy_(w[i : i + 256].t())
            self.key, self.t = key, t
        return self.t
