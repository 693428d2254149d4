"""Bad input gets a clear ValueError/TypeError before any heavy work."""

from __future__ import annotations

import pytest
import torch

import lens
from tests.conftest import tiny_model


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.mark.parametrize("bad", [-1, 97, 1000])
def test_token_out_of_vocab(model, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} .*d_vocab=97"):
        model(torch.tensor([[1, bad, 2]]))


def test_float_tokens_rejected(model):
    with pytest.raises(TypeError, match="integer"):
        model(torch.rand(1, 3))


def test_too_long_sequence_names_length_n_ctx_and_override(model):
    with pytest.raises(ValueError, match=r"65 positions.*n_ctx is 64.*context_size_override"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_too_long_names_trained_maximum():
    m = lens.HookedTransformer(lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=8,
                                                      n_ctx_trained=32, positional="rotary"))  # fmt: skip
    with pytest.raises(ValueError, match=r"9 positions.*n_ctx is 8.*context_size_override.*32"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_hook_names_suggest_closest(model):
    toks = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_pattern"):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_patern", lambda x, hook: None)])
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_pre"):
        model.run_with_cache(toks, names_filter=["blocks.1.hook_resid_pr"])
    with pytest.raises(ValueError, match=r"hook_resid_post"):
        model.run_with_cache(toks, names_filter="blocks.0.resid_post")
    _, cache = model.run_with_cache(toks)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.hook_post"):
        cache["blocks.0.mlp.hook_pots"]
    with pytest.raises(ValueError, match="out of range"):
        cache["resid_pre", 5]
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_uncached_hook_says_so(model):
    _, cache = model.run_with_cache(torch.tensor([[1, 2]]), names_filter="hook_embed")
    with pytest.raises(ValueError, match="not cached"):
        cache["pattern", 0]


def test_hook_returning_wrong_shape(model):
    bad = lambda x, hook: x[:, :1]  # noqa: E731
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_attn_out.*\(1, 1, 32\).*\(1, 3, 32\)"):
        model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[("blocks.0.hook_attn_out", bad)])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_attention_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\).*batch=1, pos=3"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2, dtype=torch.long))


def test_bad_return_type_and_layers(model):
    toks = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="return_type"):
        model(toks, return_type="logprobs")
    with pytest.raises(ValueError, match="stop_at_layer=5"):
        model(toks, stop_at_layer=5)
    with pytest.raises(ValueError, match="residual stream"):
        model(toks, start_at_layer=1)
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_remove_batch_dim_needs_batch_one(model):
    with pytest.raises(ValueError, match="batch size 1"):
        model.run_with_cache(torch.tensor([[1, 2], [3, 4]]), remove_batch_dim=True)
