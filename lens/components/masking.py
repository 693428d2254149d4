"""Per-forward attention masks: causal, sliding window and padding, built from positions in use.

Nothing here is sized by ``n_ctx``: an :class:`AttentionContext` is made once per forward pass for the
actual query/key lengths and handed to every layer, which asks it for a boolean mask (True = may
attend) only when it needs one. Masks are cached per window size within the forward, so layers share
them. The plain case (no padding, no cache offset, no effective window) needs no mask at all: fused
attention runs with ``is_causal=True``.

A query may attend to key ``j`` when ``j <= i`` (causal), ``i - j < window`` (sliding window) and key
``j`` is not padding. A padding query attends only to itself, so no softmax row is empty (no NaNs).

>>> ctx = AttentionContext.build(batch=1, q_len=4)
>>> ctx.mask(k_len=4, window=2)[0, 0].int().tolist()
[[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass needs to know about positions and masking.

    Attributes:
        q_offset: index of the first query in the key sequence (tokens already in a KV cache).
        q_len: number of query positions in this forward.
        positions: ``[batch, q_len]`` position ids (padding-aware) for rotary / learned embeddings.
        key_valid: ``[batch, q_offset + q_len]`` False on padding keys, or None when there is none.
        kv_cache: an object with ``update(layer, k, v) -> (k_all, v_all)``, or None.
        cos, sin: rotary tables for ``positions`` (filled by the model when it uses rotary).
    """

    q_offset: int
    q_len: int
    positions: Int[Tensor, "batch q"]
    key_valid: Bool[Tensor, "batch k"] | None = None
    kv_cache: Any = None
    cos: Float[Tensor, "batch q rot"] | None = None
    sin: Float[Tensor, "batch q rot"] | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        batch: int,
        q_len: int,
        attention_mask: Int[Tensor, "batch k"] | None = None,
        q_offset: int = 0,
        positions: Int[Tensor, "batch q"] | None = None,
        device: torch.device | str | None = None,
        kv_cache: Any = None,
    ) -> AttentionContext:
        """Context for a forward of ``q_len`` new tokens after ``q_offset`` cached ones.

        ``attention_mask`` covers all ``q_offset + q_len`` keys (1 = real token). Positions default
        to ``cumsum(mask) - 1`` so a left-padded row is numbered as if it ran alone.
        """
        key_valid = None
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if not bool(attention_mask.bool().all()):
                key_valid = attention_mask.bool()
        if positions is None:
            if attention_mask is not None:
                pos = attention_mask.long().cumsum(-1) - 1
                positions = pos[:, q_offset:].clamp_min(0)
            else:
                positions = torch.arange(q_offset, q_offset + q_len, device=device).expand(batch, q_len)
        return cls(q_offset, q_len, positions, key_valid, kv_cache)

    def is_plain_causal(self, k_len: int, window: int | None) -> bool:
        """True when the mask is exactly the square causal mask (fused ``is_causal=True`` applies)."""
        return (
            self.key_valid is None
            and self.q_offset == 0
            and k_len == self.q_len
            and (window is None or window >= k_len)
        )

    def mask(self, k_len: int, window: int | None = None) -> Bool[Tensor, "batch_or_1 1 q k"]:
        """Boolean mask (True = may attend) for ``k_len`` keys, cached per (k_len, window)."""
        key = (k_len, window)
        if key not in self._masks:
            device = self.positions.device
            q_idx = torch.arange(self.q_offset, self.q_offset + self.q_len, device=device)[:, None]
            k_idx = torch.arange(k_len, device=device)[None, :]
            allowed = k_idx <= q_idx
            if window is not None:
                allowed = allowed & (q_idx - k_idx < window)
            allowed = allowed[None, None]
            if self.key_valid is not None:
                valid = self.key_valid[:, None, None, :k_len]
                allowed = (allowed & valid) | (k_idx == q_idx)[None, None]
            self._masks[key] = allowed
        return self._masks[key]
