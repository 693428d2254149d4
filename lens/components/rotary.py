"""Rotary position embeddings, computed lazily for the positions in use.

Only the inverse frequencies (``rotary_dim / 2`` numbers) are stored; cos/sin are computed once per
forward for the batch's own position ids, so nothing scales with ``n_ctx`` and left-padded rows rotate
by their real positions. Rotation is the "rotate half" convention (Llama, Mistral, GPT-NeoX, Qwen2,
Gemma); with ``rotary_dim < d_head`` only the first ``rotary_dim`` features rotate (partial rotary).

Scalings (``cfg.rope_scaling["rope_type"]``, the math of ``transformers``' ``ROPE_INIT_FUNCTIONS``):
``linear``, ``llama3``, ``yarn`` (NTK-by-parts ramp between ``beta_fast`` and ``beta_slow`` plus the
``attention_factor`` / ``mscale`` on cos and sin), ``dynamic`` (dynamic NTK: the base grows with the
sequence length once it exceeds ``max_position_embeddings``) and ``longrope`` (Phi-3's ``su``: per-frequency
``short_factor`` up to ``original_max_position_embeddings``, ``long_factor`` beyond, and an attention factor).
The lengths these read travel in the scaling dict (``original_max_position_embeddings``, falling back to
``max_position_embeddings``, which the families' adapters put there).

**Sequence-length-dependent scalings are stateless.** ``dynamic`` and ``longrope`` choose their frequencies
from the positions of the forward being run: the sequence length is ``max(positions) + 1`` over the batch.
On a KV-cached decode step the positions are the new token's, so the length is the whole sequence so far.
``transformers``' dynamic rope keeps state instead: its rotary module keeps the frequencies of the longest
sequence it has seen until an input shorter than ``max_position_embeddings`` resets them (its longrope
chooses per call, as lens). Within one forward, and within one ``generate`` call (whose lengths only grow),
both give the same frequencies; across calls lens depends only on the call itself, so a 12-token forward
after a 20-token one rotates as a 12-token forward (``transformers``: with the 20-token base).
Keys already in a KV cache keep the rotation they were computed with (as in ``transformers``: dynamic-NTK
generation with a cache therefore differs from generation without one, in both libraries). For ``longrope``
every position's rotation changes once the sequence outgrows ``original_max_position_embeddings`` (the
short-factor keys should be long-factor keys), so generation refills the cache at that point, as
``transformers``' Phi-3 ``generate`` does (:func:`cache_refresh_length`).

>>> rot = Rotary(cfg)
>>> cos, sin = rot.cos_sin(torch.arange(5)[None], torch.float32)   # [1, 5, rotary_dim]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens.config import TransformerConfig


def rope_kind(scaling: dict[str, Any] | None) -> str:
    """The scaling type of a ``rope_scaling`` dict (``"default"`` when there is none)."""
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default")) or "default"


def original_context(scaling: dict[str, Any]) -> int:
    """The pre-training context a scaling extends: ``original_max_position_embeddings``, falling back to
    ``max_position_embeddings`` (as ``transformers`` standardises its configs)."""
    value = scaling.get("original_max_position_embeddings") or scaling.get("max_position_embeddings")
    return int(value)


def _exponents(dim: int, device: torch.device | str | None = None) -> Float[Tensor, " half"]:
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim


def _yarn(scaling: dict[str, Any], base: float, dim: int) -> tuple[Tensor, float]:
    old_ctx = original_context(scaling)
    factor = scaling.get("factor")
    if factor is None:  # DeepSeek-style configs: the extension ratio
        factor = scaling["max_position_embeddings"] / old_ctx

    def mscale(scale: float, m: float = 1.0) -> float:  # YaRN paper, eq. 21
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    fast, slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def dim_for(rotations: float) -> float:  # the feature index whose wavelength fits `rotations` turns
        return dim * math.log(old_ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_for(fast), dim_for(slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies, unchanged), 0: interpolate (divided by factor)
    wavelength_scale = base ** _exponents(dim)
    extrapolated, interpolated = 1.0 / wavelength_scale, 1.0 / (factor * wavelength_scale)
    return interpolated * (1 - keep) + extrapolated * keep, float(attention)


def dynamic_ntk_inv_freq(
    scaling: dict[str, Any], base: float, dim: int, seq_len: int | Tensor | None = None
) -> Float[Tensor, " half"]:
    """Dynamic NTK inverse frequencies for a sequence of ``seq_len`` positions (an int, or a 0-d tensor on
    the device the result should live on); lengths up to ``max_position_embeddings`` (and None) give the
    unscaled base. Python numbers for an int, float32 tensors for a tensor, as ``transformers`` computes them
    at init and in the forward."""
    ctx, factor = int(scaling["max_position_embeddings"]), float(scaling["factor"])
    device = None
    if seq_len is None:
        seq_len = ctx
    if isinstance(seq_len, Tensor):
        device = seq_len.device
        seq_len = torch.maximum(seq_len, torch.tensor(ctx, dtype=seq_len.dtype, device=device))
    else:
        seq_len = max(seq_len, ctx)
    grown = base * ((factor * seq_len / ctx) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (grown ** _exponents(dim, device))


def _longrope(scaling: dict[str, Any], base: float, dim: int, long: bool) -> tuple[Tensor, float]:
    old_ctx = original_context(scaling)
    factor = scaling.get("factor")
    if factor is None:  # Phi-3: the ratio of the extended to the original context
        factor = scaling["max_position_embeddings"] / old_ctx
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_ctx))
    ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
    return 1.0 / (ext * base ** _exponents(dim)), float(attention)


def rotary_inv_freq(cfg: TransformerConfig, seq_len: int | None = None) -> tuple[Float[Tensor, "half"], float]:
    """Inverse frequencies and the attention scaling factor, honouring ``cfg.rope_scaling``.

    Supported scalings: ``linear`` (positions divided by ``factor``), ``llama3`` (Llama-3.1's
    wavelength-dependent smoothing), ``yarn``, ``dynamic`` and ``longrope``; ``seq_len`` (the length of the
    sequence being run) matters for the last two only: None means a short sequence (dynamic: the unscaled
    base; longrope: the short factors). Unknown types raise ``ValueError``.
    """
    dim = cfg.rotary_dim
    base = cfg.rotary_base
    inv = 1.0 / (base ** _exponents(dim))
    scaling = cfg.rope_scaling or {}
    kind = rope_kind(scaling)
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(original_context(scaling))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn(scaling, base, dim)
    if kind == "dynamic":
        return dynamic_ntk_inv_freq(scaling, base, dim, seq_len), 1.0
    if kind == "longrope":
        return _longrope(scaling, base, dim, long=seq_len is not None and seq_len > original_context(scaling))
    raise ValueError(
        f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3, yarn, dynamic, longrope)"
    )


def cache_refresh_length(cfg: TransformerConfig) -> int | None:
    """The sequence length past which keys cached at shorter lengths are stale, or None.

    ``longrope`` rotates with its short factors up to ``original_max_position_embeddings`` positions and with
    its long factors beyond, for every position of the sequence; keys cached before the sequence grew past
    that length carry the short rotation. A generation loop whose sequence reaches this length + 1 with at
    most this many positions cached recomputes its cache over the whole sequence (what ``transformers``'
    Phi-3 ``generate`` does). ``dynamic`` keeps its cached keys, as ``transformers`` does.
    """
    if cfg.positional != "rotary" or rope_kind(cfg.rope_scaling) != "longrope":
        return None
    return original_context(cfg.rope_scaling)


class Rotary(nn.Module):
    """Holds the inverse frequencies and turns position ids into cos/sin tables.

    ``inv_freq`` is the short-sequence table (dynamic NTK: the unscaled base; longrope: the short factors);
    the length-dependent scalings pick their table per call from ``max(positions) + 1`` (module docstring).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.adjacent_pairs = cfg.rotary_adjacent_pairs
        self.kind = rope_kind(cfg.rope_scaling)
        inv, self.attention_scaling = rotary_inv_freq(cfg)
        self.register_buffer("inv_freq", inv.to(cfg.device), persistent=False)
        self.switch_length: int | None = None  # longer sequences use another table
        if self.kind == "longrope":
            self.switch_length = original_context(cfg.rope_scaling)
            long, _ = rotary_inv_freq(cfg, seq_len=self.switch_length + 1)
            self.register_buffer("inv_freq_long", long.to(cfg.device), persistent=False)
        elif self.kind == "dynamic":
            self.switch_length = int(cfg.rope_scaling["max_position_embeddings"])
            self._dynamic = (dict(cfg.rope_scaling), cfg.rotary_base, cfg.rotary_dim)

    def _apply(self, fn, recurse=True):
        """Device moves reach the inverse frequencies; dtype casts do not (they stay float32).

        ``model.half()`` / ``.bfloat16()`` / ``.to(dtype)`` would otherwise round ``inv_freq`` to the new dtype,
        and a converted model would rotate differently from one loaded in that dtype (whose tables are built in
        float32; :meth:`cos_sin` casts the cos/sin tables, not the frequencies). Only the device is taken from
        the converted buffer; the float32 values are kept, so ``.bfloat16().float()`` gives them back exactly.
        """
        before = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def inv_freq_for(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, " half"]:
        """The inverse frequencies a forward over ``positions`` rotates with (no host sync)."""
        if self.switch_length is None or positions.numel() == 0:
            return self.inv_freq
        seq_len = positions.max() + 1
        if self.kind == "longrope":
            long = self.inv_freq_long
        else:
            long = dynamic_ntk_inv_freq(*self._dynamic, seq_len)
        return torch.where(seq_len > self.switch_length, long, self.inv_freq)

    def cos_sin(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        positions = positions.to(self.inv_freq.device)
        freqs = positions.float()[..., None] * self.inv_freq_for(positions).float()
        # rotate-half pairs feature i with i + rot/2; adjacent pairs (GPT-J) pair 2i with 2i + 1
        emb = freqs.repeat_interleave(2, dim=-1) if self.adjacent_pairs else torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
    adjacent_pairs: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``rot`` features of every head by its position's angles.

    ``adjacent_pairs``: the tables came from a ``Rotary`` with ``cfg.rotary_adjacent_pairs`` (GPT-J).
    """
    rot = cos.shape[-1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    turn = _rotate_pairs if adjacent_pairs else _rotate_half
    if rot == x.shape[-1]:
        return x * cos + turn(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + turn(x_rot) * sin, x_pass), dim=-1)


def _rotate_pairs(x: Tensor) -> Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
