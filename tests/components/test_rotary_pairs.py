"""``rotary_adjacent_pairs`` (GPT-J): rotary turns feature pairs (2i, 2i+1) by position angles.

Oracle: the rotation written out pair by pair with explicit angles ``pos * base^(-2i/rot)``; plus the
family parity test against Hugging Face's GPT-J.
"""

from __future__ import annotations

import torch

from lens.components.rotary import Rotary, apply_rotary
from tests.tiny import tiny_cfg


def test_adjacent_pairs_rotate_each_pair_by_its_angle():
    cfg = tiny_cfg("neox", rotary_dim=4, rotary_adjacent_pairs=True)  # d_head 8: 4 rotated, 4 passed through
    pos = torch.arange(5)[None]
    cos, sin = Rotary(cfg).cos_sin(pos, torch.float32)
    x = torch.randn(1, 5, 2, cfg.d_head, generator=torch.Generator().manual_seed(0))
    out = apply_rotary(x, cos, sin, adjacent_pairs=True)
    expected = x.clone()
    for i in range(cfg.rotary_dim // 2):
        angle = pos[0, :, None].float() * cfg.rotary_base ** (-2 * i / cfg.rotary_dim)  # [pos, 1]
        a, b = x[0, :, :, 2 * i], x[0, :, :, 2 * i + 1]
        expected[0, :, :, 2 * i] = a * angle.cos() - b * angle.sin()
        expected[0, :, :, 2 * i + 1] = a * angle.sin() + b * angle.cos()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[..., 4:], x[..., 4:], atol=0, rtol=0)  # partial rotary: the rest untouched
    halves = apply_rotary(x, *Rotary(tiny_cfg("neox", rotary_dim=4)).cos_sin(pos, torch.float32))
    assert not torch.allclose(out, halves)  # a different convention, not a relabelling of the same numbers
