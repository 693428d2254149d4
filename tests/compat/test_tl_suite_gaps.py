"""TransformerLens API that TransformerLens's own test suite calls and lens lacked (scripts/tl_suite.py found them).

- ``TransformerConfig.d_vocab_out``: the number of logits (TL's field; default ``d_vocab``).
- ``TransformerConfig.is_layer_norm_activation()``: True for an activation with its own LayerNorm (``solu_ln``).

TransformerLens is the oracle where installed (identical weights copied through the public ``W_*`` views).
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens.config import ACTIVATIONS

SMALL = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=12, d_vocab=40)


def test_d_vocab_out_defaults_to_d_vocab():
    cfg = lens.TransformerConfig(**SMALL)
    assert cfg.d_vocab_out == cfg.d_vocab == 40


def test_d_vocab_out_sets_the_number_of_logits():
    model = lens.HookedTransformer(lens.TransformerConfig(**SMALL, d_vocab_out=30, unembed_bias=True))
    tokens = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 5, 30)
    assert model.W_U.shape == (16, 30) and model.b_U.shape == (30,)
    assert model.W_E.shape == (40, 16)  # the input vocabulary is unchanged
    # the logits are the final residual times W_U plus b_U (exact math)
    _, cache = model.run_with_cache(tokens)
    expected = cache["ln_final.hook_normalized"] @ model.W_U + model.b_U
    torch.testing.assert_close(logits, expected)


def test_d_vocab_out_survives_to_dict_round_trip():
    cfg = lens.TransformerConfig(**SMALL, d_vocab_out=33)
    assert lens.TransformerConfig.from_dict(cfg.to_dict()).d_vocab_out == 33


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_d_vocab_out_must_be_a_positive_int(bad):
    with pytest.raises((ValueError, TypeError), match="d_vocab_out"):
        lens.TransformerConfig(**SMALL, d_vocab_out=bad)


def test_tied_embeddings_need_equal_vocabularies():
    with pytest.raises(ValueError, match="d_vocab_out=30"):
        lens.TransformerConfig(**SMALL, d_vocab_out=30, tie_word_embeddings=True)


@pytest.mark.parametrize("act_fn", ACTIVATIONS)
def test_is_layer_norm_activation(act_fn):
    cfg = lens.TransformerConfig(**SMALL, act_fn=act_fn)
    assert cfg.is_layer_norm_activation() == (act_fn == "solu_ln")


# -- TransformerLens as the oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("act_fn", [a for a in ACTIVATIONS if a != "quick_gelu"])
def test_is_layer_norm_activation_matches_transformer_lens(act_fn):
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is the optional oracle")
    tl_cfg = tl.HookedTransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=40, act_fn=act_fn
    )
    assert (
        lens.TransformerConfig(**SMALL, act_fn=act_fn).is_layer_norm_activation() == tl_cfg.is_layer_norm_activation()
    )


def test_d_vocab_out_logits_match_transformer_lens():
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is the optional oracle")
    model = lens.HookedTransformer(
        lens.TransformerConfig(**SMALL, d_vocab_out=30, attn_only=True, normalization=None, unembed_bias=True), seed=3
    )
    with torch.no_grad():
        model.unembed.bias.normal_(generator=torch.Generator().manual_seed(4))
    tl_cfg = tl.HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_head=8,
        n_ctx=12,
        d_vocab=40,
        d_vocab_out=30,
        attn_only=True,
        normalization_type=None,
    )
    tl_model = tl.HookedTransformer(tl_cfg)
    attn = model.blocks[0].attn
    weights = {
        "embed.W_E": model.W_E,
        "pos_embed.W_pos": model.W_pos,
        "unembed.W_U": model.W_U,
        "unembed.b_U": model.b_U,
        **{f"blocks.0.attn.{n}": getattr(attn, n) for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")},
    }
    missing, _ = tl_model.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=False)
    assert not [k for k in missing if k.split(".")[-1] not in ("mask", "IGNORE")], missing
    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = tl_model(tokens)
        got = model(tokens)
    assert got.shape == expected.shape == (2, 7, 30)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
