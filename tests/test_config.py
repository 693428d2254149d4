"""TransformerConfig validation and derived fields."""

from __future__ import annotations

import pytest
import torch

from lens import TransformerConfig

BASE = dict(n_layers=1, d_model=64, n_heads=4, d_vocab=10, n_ctx=16)


def test_derived_fields():
    cfg = TransformerConfig(**BASE)
    assert (cfg.d_head, cfg.d_mlp, cfg.n_key_value_heads, cfg.rotary_dim) == (16, 256, 4, 16)
    assert cfg.dtype == torch.float32
    assert TransformerConfig(**BASE, dtype="bf16").dtype == torch.bfloat16
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=66), "d_model=66 is not divisible by n_heads=4"),
        (dict(n_key_value_heads=3), "n_heads=4 is not divisible by n_key_value_heads=3"),
        (dict(act_fn="swish2"), "act_fn='swish2'"),
        (dict(normalization="batchnorm"), "normalization="),
        (dict(positional="alibi"), "positional="),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(positional="rotary", rotary_dim=20), "rotary_dim=20"),
        (dict(window_size=-1), "window_size must be positive"),
        (dict(window_layers=(3,)), "window_layers"),
        (dict(dtype="float8"), "'float8' is not a dtype"),
        (dict(attn_only=True, parallel_attn_mlp=True), "parallel_attn_mlp"),
    ],
)
def test_inconsistent_values_raise(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TransformerConfig(**{**BASE, **changes})


def test_type_errors():
    with pytest.raises(TypeError, match="n_heads must be an int"):
        TransformerConfig(**{**BASE, "n_heads": 4.0})


def test_explicit_d_head_allows_non_divisible():
    cfg = TransformerConfig(**{**BASE, "d_model": 66, "d_head": 8})
    assert cfg.d_head == 8


def test_layer_window():
    cfg = TransformerConfig(**BASE, window_size=8, window_layers=(0,))
    assert cfg.layer_window(0) == 8
    cfg2 = TransformerConfig(**{**BASE, "n_layers": 2}, window_size=8)
    assert cfg2.layer_window(1) == 8
