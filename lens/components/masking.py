"""Per-forward attention masks: causal, sliding window and padding, built from positions in use.

Nothing here is sized by ``n_ctx``: an :class:`AttentionContext` is made once per forward pass for the
actual query/key lengths and handed to every layer, which asks it for a boolean mask (True = may
attend) only when it needs one. Masks are cached per window size within the forward, so layers share
them. The plain case (no padding, no cache offset, no effective window) needs no mask at all: fused
attention runs with ``is_causal=True``.

A query may attend to key ``j`` when ``j <= i`` (causal), ``i - j < window`` (sliding window) and key
``j`` is not padding. A padding query attends only to itself, so no softmax row is empty (no NaNs).

With a KV cache the keys a layer sees are the last ``k_len`` positions ending at the last query
(``q_offset + q_len``), or, for a sliding-window ring buffer on a decode step, the positions listed in
``key_pos[window]`` (ring-slot order). A one-token decode step with no padding whose keys all lie in
the window needs no mask at all (``is_unmasked``).

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
        kv_cache: an object with ``update_heads(layer, k, v) -> (k_all, v_all)`` in the heads-first layout
            ``[batch, kv_head, pos, d_head]`` (:class:`lens.generation.KVCache`), or None.
        key_pos: ``{window: [k] key positions}`` for sliding-window layers whose cache returns a ring
            buffer in slot order (set from ``kv_cache.key_positions``), or None.
        cos, sin: rotary tables for ``positions`` (filled by the model when it uses rotary).
        cos_local, sin_local: the tables of the sliding-window layers when they have their own rotary base
            (``cfg.rotary_base_local``), else None.
    """

    q_offset: int
    q_len: int
    positions: Int[Tensor, "batch q"]
    key_valid: Bool[Tensor, "batch k"] | None = None
    kv_cache: Any = None
    key_pos: dict[int, Int[Tensor, " k"]] | None = None
    cos: Float[Tensor, "batch q rot"] | None = None
    sin: Float[Tensor, "batch q rot"] | None = None
    cos_local: Float[Tensor, "batch q rot"] | None = None
    sin_local: Float[Tensor, "batch q rot"] | None = None
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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AttentionContext:
        """This context with its tensors (positions, padding mask, rotary tables, ring positions) on ``device``;
        ``self`` when they are there already. Masks are rebuilt there lazily; the KV cache is shared."""
        device = torch.device(device)
        if self.positions.device == device:
            return self

        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return AttentionContext(
            self.q_offset, self.q_len, move(self.positions), move(self.key_valid), self.kv_cache,
            None if self.key_pos is None else {w: move(p) for w, p in self.key_pos.items()},
            move(self.cos), move(self.sin), move(self.cos_local), move(self.sin_local),
        )  # fmt: skip

    def is_plain_causal(self, k_len: int, window: int | None) -> bool:
        """True when the mask is exactly the square causal mask (fused ``is_causal=True`` applies)."""
        return (
            self.key_valid is None
            and self.q_offset == 0
            and k_len == self.q_len
            and (window is None or window >= k_len)
        )

    def is_unmasked(self, k_len: int, window: int | None) -> bool:
        """True on a one-token step without padding whose ``k_len`` keys are all visible (no mask needed).

        A cache hands a layer only keys at or before the query, and a ring buffer only keys inside the
        window, so the query sees every key unless a contiguous key range is longer than the window.
        """
        return self.key_valid is None and self.q_len == 1 and (window is None or k_len <= window)

    def blocked(
        self, k_len: int, window: int | None = None, key_pos: Int[Tensor, " k"] | None = None
    ) -> Bool[Tensor, "batch_or_1 1 q k"]:
        """The complement of :meth:`mask` (True = masked out), cached alike (the explicit path fills it)."""
        key = ("blocked", k_len, window, key_pos)
        if key not in self._masks:
            self._masks[key] = ~self.mask(k_len, window, key_pos)
        return self._masks[key]

    def mask(
        self, k_len: int, window: int | None = None, key_pos: Int[Tensor, " k"] | None = None
    ) -> Bool[Tensor, "batch_or_1 1 q k"]:
        """Boolean mask (True = may attend) for ``k_len`` keys, cached per (k_len, window, key_pos).

        Keys are the positions ``[q_offset + q_len - k_len, q_offset + q_len)`` unless ``key_pos``
        (a ring buffer's per-slot positions) says otherwise.
        """
        key = (k_len, window, key_pos)
        if key not in self._masks:
            end = self.q_offset + self.q_len
            if key_pos is None:
                self._masks[key] = self.range_mask(self.q_offset, end, end - k_len, end, window)
            else:
                self._masks[key] = self._build(self.q_offset, end, key_pos.to(self.positions.device), window)
        return self._masks[key]

    def range_mask(
        self, q_start: int, q_end: int, k_start: int, k_end: int, window: int | None = None
    ) -> Bool[Tensor, "batch_or_1 1 q k"]:
        """Mask for queries at sequence indices ``[q_start, q_end)`` against keys ``[k_start, k_end)``."""
        return self._build(q_start, q_end, torch.arange(k_start, k_end, device=self.positions.device), window)

    def _build(
        self, q_start: int, q_end: int, k_idx: Int[Tensor, " k"], window: int | None
    ) -> Bool[Tensor, "batch_or_1 1 q k"]:
        # Only bool [q, k] tensors are created: comparisons broadcast a [q, 1] column against a [1, k] row.
        q_idx = torch.arange(q_start, q_end, device=k_idx.device)[:, None]
        row = k_idx[None, :]
        allowed = (row <= q_idx) & (row >= 0)
        if window is not None:
            allowed &= row > q_idx - window
        allowed = allowed[None, None]
        if self.key_valid is not None:
            valid = self.key_valid[:, k_idx.clamp_min(0)]
            allowed = (allowed & valid[:, None, None, :]) | (row == q_idx)[None, None]
        return allowed
