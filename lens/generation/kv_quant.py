"""Quantized storage for the KV cache: int8 per row, int4 per group of ``G`` values packed two per byte.

Why: a decode step reads every cached key and value, so the cache's size bounds the batch and context that
fit in memory. :class:`~lens.generation.kv_cache.KVCache` stores them with these functions when
``kv_cache_dtype`` is ``"int8"`` or ``"int4"``.

* **int8**: symmetric, one float32 scale per ``d_head`` row, ``scale = max|x| / 127``.
* **int4**: symmetric, one **float16** scale per group of ``G`` values along ``d_head`` (``G = 32``, or
  ``d_head`` when smaller), ``scale = max|x| / 7``, levels ``-7..7`` stored as the nibble ``q + 8`` (even
  index in the low nibble, odd in the high one). Memory per value: ``0.5 + 2 / G`` bytes, so
  ``1/8 + 1/(2G)`` of float32: 0.141x at ``G = 32`` (``d_head >= 32``), 0.156x at 16, 0.1875x at 8.
  Why symmetric and float16: a zero point, or a float32 scale, adds another 2 bytes per group; at
  ``d_head = 8`` (``G = 8``) either gives 0.25x, over the 0.2x target, while keys and values after the
  attention projections are centred enough that a zero point buys little. float16's range (scales in
  ``[2**-14, 65504]``, i.e. ``|x| <= 4.5e5``) covers them; a larger value saturates. The dequantized value is
  within ``scale / 2`` of the input (the scale is rounded to float16 *before* quantizing, so the bound holds
  for the scale actually stored).

>>> packed, scale = quantize_int4(torch.tensor([[7.0, -3.5, 0.0, 1.0]]), group=4)
>>> packed.shape, scale.dtype, dequantize_int4(packed, scale, 4).tolist()
(torch.Size([1, 2]), torch.float16, [[7.0, -4.0, 0.0, 1.0]])
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

INT4_GROUP = 32  # default values per int4 scale (along d_head)
INT4_LEVEL = 7  # symmetric levels -7..7
_F16_MIN_SCALE = 2.0**-14  # smallest normal float16: keeps max|x| / scale <= 7 after the cast
_F16_MAX = 65504.0


def quantize_int8(x: Float[Tensor, "... d"]) -> tuple[Int[Tensor, "... d"], Float[Tensor, "... 1"]]:
    """Symmetric per-row int8 quantization: ``x ~= q * scale`` with ``scale = max|x| / 127`` (float32).

    >>> q, s = quantize_int8(torch.tensor([[1.0, -0.5, 0.25]]))
    >>> q.tolist(), round(s.item() * 127, 6)
    ([[127, -64, 32]], 1.0)
    """
    x32 = x.float()
    scale = x32.abs().amax(-1, keepdim=True).div_(127.0).clamp_min_(torch.finfo(torch.float32).tiny)
    return torch.round(x32 / scale).clamp_(-127, 127).to(torch.int8), scale


def dequantize_int8(q: Int[Tensor, "... d"], scale: Float[Tensor, "... 1"], dtype=torch.float32) -> Tensor:
    """``q * scale`` in ``dtype`` (the inverse of :func:`quantize_int8` up to rounding)."""
    return (q.to(torch.float32) * scale).to(dtype)


def int4_group(d_head: int, group: int = INT4_GROUP) -> int:
    """The int4 group size for ``d_head``: ``min(group, d_head)``; ``ValueError`` if ``d_head`` cannot be packed.

    ``d_head`` must be even (two values per byte) and a multiple of the group (one scale per group).

    >>> int4_group(64), int4_group(8)
    (32, 8)
    >>> int4_group(80)
    Traceback (most recent call last):
    ValueError: kv_cache_dtype='int4' stores one scale per group of 32 values along d_head, so d_head must be a \
multiple of 32; got d_head=80 (80 % 32 = 16). Use kv_cache_dtype='int8', or KVCache(..., int4_group=G) with a \
G that divides 80
    """
    if isinstance(group, bool) or not isinstance(group, int) or group < 2 or group % 2:
        raise ValueError(f"the int4 group size must be an even int >= 2, got {group!r}")
    if d_head % 2:
        raise ValueError(
            f"kv_cache_dtype='int4' packs two values per byte, so d_head must be even; got d_head={d_head}. "
            "Use kv_cache_dtype='int8'"
        )
    g = min(group, d_head)
    if d_head % g:
        raise ValueError(
            f"kv_cache_dtype='int4' stores one scale per group of {g} values along d_head, so d_head must be a "
            f"multiple of {g}; got d_head={d_head} ({d_head} % {g} = {d_head % g}). Use kv_cache_dtype='int8', "
            f"or KVCache(..., int4_group=G) with a G that divides {d_head}"
        )
    return g


def pack_nibbles(q: UInt8[Tensor, "... d"]) -> UInt8[Tensor, "... d/2"]:
    """Two values ``0..15`` per byte: element ``2i`` in the low nibble, ``2i + 1`` in the high one."""
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_nibbles(packed: UInt8[Tensor, "... h"]) -> UInt8[Tensor, "... 2*h"]:
    """The inverse of :func:`pack_nibbles`."""
    return torch.stack((packed & 0xF, packed >> 4), -1).flatten(-2)


def quantize_int4(
    x: Float[Tensor, "... d"], group: int
) -> tuple[UInt8[Tensor, "... d/2"], Float[Tensor, "... d/group"]]:
    """Symmetric int4 with one float16 scale per ``group`` values: ``(packed [..., d/2] uint8, scale [..., d/group])``.

    ``x ~= (nibble - 8) * scale`` with ``scale = max|x| / 7`` over each group (see the module docstring).

    >>> packed, scale = quantize_int4(torch.tensor([[0.7, -0.1]]), group=2)
    >>> packed.tolist(), scale.float().mul(7).tolist()      # nibbles 15 (low) and 7 (high): 0x7F
    ([[127]], [[0.6998291015625]])
    """
    d = x.shape[-1]
    if d % group or group % 2:
        raise ValueError(f"the last dim {d} must be a multiple of the group {group}, itself even")
    xg = x.float().unflatten(-1, (d // group, group))
    scale = xg.abs().amax(-1).div_(INT4_LEVEL).clamp_(_F16_MIN_SCALE, _F16_MAX).to(torch.float16)
    q = torch.round(xg / scale.float()[..., None]).clamp_(-INT4_LEVEL, INT4_LEVEL).add_(8).to(torch.uint8)
    return pack_nibbles(q.flatten(-2)), scale


def dequantize_int4(
    packed: UInt8[Tensor, "... h"], scale: Float[Tensor, "... g"], group: int, dtype=torch.float32
) -> Float[Tensor, "... d"]:
    """The values :func:`quantize_int4` stored, in ``dtype``."""
    q = unpack_nibbles(packed).to(torch.float32).sub_(8)
    return (q.unflatten(-1, (-1, group)) * scale.float()[..., None]).flatten(-2).to(dtype)
